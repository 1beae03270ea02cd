"""Pair / label manifests: CSV, TSV, JSONL (or a JSON list) and parquet.

One row names an image (relative paths resolve against the manifest's folder, or `root=`) and gives captions
and/or a label. Several captions per image come either as a list cell (a JSON list in CSV) or as repeated
rows for the same image, which are merged in file order. The sample id is the `id` column when there is
one, else the image path as written in the manifest.

Columns are found by common names unless given (`image_col=`, `caption_col=`, `label_col=`, `id_col=`); a
named column that is missing is a `UsageError` listing the columns that exist. A row that cannot be parsed
is skipped and counted as `bad_record` — never a crash, never a silent drop.
"""
from __future__ import annotations

import csv
import json
import math
import os

import pyarrow.parquet as pq

from clipforge.data.sample import Sample, file_meta
from clipforge.data.sources.base import Source
from clipforge.data.sources.files import parse_json
from clipforge.data.sources.folder import ext_of
from clipforge.errors import ClipforgeError, UsageError

IMAGE_COLS = ("image", "image_path", "filepath", "file", "filename", "path", "img", "jpg", "png")
CAPTION_COLS = ("captions", "caption", "text", "title", "txt")
LABEL_COLS = ("label", "class", "cls", "target")
ID_COLS = ("id", "key", "__key__", "uid")
FORMATS = ("csv", "tsv", "jsonl", "parquet")


def format_of(path: str) -> str | None:
    lower = path.lower()
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if lower.endswith(suffix):
            return fmt
    return None


def read_rows(path: str, fmt: str, bad: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
    """All rows as dicts plus the column names; unparseable rows go to `bad` as (where, reason)."""
    if fmt == "parquet":
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a broken file
            raise ClipforgeError(f"cannot read parquet manifest {path}: {e}") from None
        return table.to_pylist(), list(table.column_names)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except OSError as e:
        raise ClipforgeError(f"cannot read manifest {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ClipforgeError(f"manifest {path} is not UTF-8 text: {e}") from None
    if fmt in ("csv", "tsv"):
        return _read_delimited(text, "\t" if fmt == "tsv" else ",", path, bad)
    return _read_jsonl(text, path, bad)


def _read_delimited(text: str, delim: str, path: str, bad) -> tuple[list[dict], list[str]]:
    if "\x00" in text:
        raise ClipforgeError(f"manifest {path} contains NUL bytes: is it really a text table?")
    reader = csv.reader(text.splitlines(), delimiter=delim)
    try:
        header = next(reader)
    except StopIteration:
        raise ClipforgeError(f"manifest {path} is empty (no header row)") from None
    except csv.Error as e:
        raise ClipforgeError(f"manifest {path}: bad header: {e}") from None
    header = [h.strip() for h in header]
    rows = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error:  # e.g. a NUL byte or a field over the size limit: skip that row
            bad.append((f"line {reader.line_num}", "bad_record"))
            continue
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            bad.append((f"line {line}", "bad_record"))
            continue
        rows.append(dict(zip(header, cells)))
    return rows, header


def _read_jsonl(text: str, path: str, bad) -> tuple[list[dict], list[str]]:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a whole-file JSON list of objects
        try:
            objs = parse_json(stripped)
        except ValueError as e:
            raise ClipforgeError(f"manifest {path} is not valid JSON: {e}") from None
        if not isinstance(objs, list):
            raise ClipforgeError(f"manifest {path}: expected a JSON list of objects")
        numbered = list(enumerate(objs, 1))
    else:
        numbered = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((n, parse_json(line)))
            except ValueError:
                bad.append((f"line {n}", "bad_record"))
    rows, columns = [], {}
    for n, obj in numbered:
        if not isinstance(obj, dict):
            bad.append((f"line {n}", "bad_record"))
            continue
        rows.append(obj)
        columns.update(dict.fromkeys(obj))
    return rows, list(columns)


def _pick(columns: list[str], wanted: str | None, candidates, what: str, required: bool) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise UsageError(f"{what} column {wanted!r} not found; available columns: {columns}")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    if required:
        raise UsageError(f"no {what} column found (looked for {list(candidates)}); available columns: "
                         f"{columns}; name it with {what}_col=...")
    return None


def _captions(cell) -> list[str]:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    if isinstance(cell, str):
        s = cell.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                val = parse_json(s)
                if isinstance(val, list):
                    return [str(c) for c in val if str(c).strip()]
            except ValueError:
                pass
        return [s] if s else []
    if isinstance(cell, (list, tuple)):
        return [str(c) for c in cell if c is not None and str(c).strip()]
    return [str(cell)]


class ManifestSource(Source):
    kind = "manifest"

    def __init__(self, path: str, *, fmt: str | None = None, root: str | None = None,
                 image_col: str | None = None, caption_col: str | None = None, label_col: str | None = None,
                 id_col: str | None = None, classnames: str | list[str] | None = None,
                 spec: str | None = None, **kw):
        fmt = fmt or format_of(path)
        if fmt not in FORMATS:
            raise UsageError(f"unknown manifest format {fmt!r} for {path!r}; valid: {list(FORMATS)}")
        super().__init__(spec or f"{fmt}:{path}", **kw)
        self.path, self.fmt = path, fmt
        self.root = os.path.abspath(root) if root is not None else os.path.dirname(os.path.abspath(path))
        bad: list[tuple[str, str]] = []
        rows, columns = read_rows(path, fmt, bad)
        for where, reason in bad:
            self.open_skipped.add(where, reason)
        self.columns = columns
        if not rows and not columns:
            raise ClipforgeError(f"manifest {path} has no rows")
        self.image_col = _pick(columns, image_col, IMAGE_COLS, "image", required=True)
        self.caption_col = _pick(columns, caption_col, CAPTION_COLS, "caption", required=False)
        self.label_col = _pick(columns, label_col, LABEL_COLS, "label", required=False)
        self.id_col = _pick(columns, id_col, ID_COLS, "id", required=False)
        self.classnames = self._load_classnames(classnames)
        self._build(rows)
        self.skipped = self.open_skipped.copy()

    def _load_classnames(self, classnames) -> list[str] | None:
        if isinstance(classnames, (list, tuple)):
            return [str(c) for c in classnames]
        path = classnames if isinstance(classnames, str) else os.path.join(
            os.path.dirname(os.path.abspath(self.path)), "classnames.txt")
        if isinstance(classnames, str) and not os.path.isfile(path):
            raise UsageError(f"class names file {path!r} does not exist")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return [ln.strip() for ln in f if ln.strip()]
        return None

    def _build(self, rows: list[dict]) -> None:
        # Labels given as names map to indices of `classnames` (sorted unique names when none were given).
        label_names = None
        if self.label_col is not None:
            raw = [r.get(self.label_col) for r in rows]
            if any(isinstance(v, str) and v.strip() and not _is_int(v) for v in raw):
                if self.classnames is None:
                    self.classnames = sorted({v.strip() for v in raw if isinstance(v, str) and v.strip()})
                label_names = {c: i for i, c in enumerate(self.classnames)}
        order: dict[str, int] = {}
        self.items: list[list] = []  # [id, image ref, captions, label, extra]
        for n, row in enumerate(rows):
            where = f"row {n + 1}"
            img = row.get(self.image_col)
            if not isinstance(img, str) or not img.strip():
                self.open_skipped.add(where, "no_image")
                continue
            img = img.strip()
            key = row.get(self.id_col) if self.id_col else None
            key = str(key).strip() if key is not None and str(key).strip() else img
            caps = _captions(row.get(self.caption_col)) if self.caption_col else []
            try:
                label = self._label(row.get(self.label_col), label_names) if self.label_col else None
            except ValueError:
                self.open_skipped.add(key, "bad_record")
                continue
            if key in order:  # repeated rows add captions to the same image
                item = self.items[order[key]]
                item[2].extend(c for c in caps if c not in item[2])
                continue
            extra = {k: v for k, v in row.items()
                     if k not in (self.image_col, self.caption_col, self.label_col, self.id_col)}
            order[key] = len(self.items)
            self.items.append([key, img, list(dict.fromkeys(caps)), label, extra])

    @staticmethod
    def _label(value, names) -> int | None:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            return None
        if isinstance(value, bool):
            raise ValueError("boolean label")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            label = value
        else:
            s = str(value).strip()
            if not _is_int(s):
                if names is not None and s in names:
                    return names[s]
                raise ValueError(f"unknown label {value!r}")
            label = int(s)
        if not -2**63 <= label < 2**63:
            raise ValueError(f"label {label} is beyond int64")
        return label

    def __len__(self) -> int:
        return len(self.items)

    def _get(self, index: int) -> Sample:
        key, img, caps, label, extra = self.items[index]
        path = img if os.path.isabs(img) or "://" in img else os.path.join(self.root, img)
        meta = file_meta(path)
        meta.update(extra)
        return Sample(id=key, captions=list(caps), label=label, meta=meta, path=path, ext=ext_of(img),
                      decode_options=self.decode_options)


def _is_int(s) -> bool:
    try:
        int(str(s).strip())
        return True
    except ValueError:
        return False
