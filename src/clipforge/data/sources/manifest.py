"""Pair / label manifests: CSV, TSV, JSONL (or a JSON list) and parquet.

One row names an image (relative paths resolve against the manifest's folder, or `root=`) and gives captions
and/or a label. Several captions per image come either as a list cell (a JSON list in CSV) or as repeated
rows for the same image, which are merged in file order. The sample id is the `id` column when there is
one, else the image path as written in the manifest.

Columns are found by common names unless given (`image_col=`, `caption_col=`, `label_col=`, `id_col=`); a
named column that is missing is a `UsageError` listing the columns that exist. A row that cannot be parsed
— bad syntax, a NUL byte, bytes that are not UTF-8, a number too long to convert, the wrong number of cells —
is skipped and counted as `bad_record`, never a crash, never a silent drop; a problem of the whole file (no
header, not a table at all) is one `ClipforgeError`. How each format is read, with memory bounded, is
`manifest_rows`.

Each caption is cut to `max_caption_bytes` (`caption_truncated` in `open_notes`) as its row is read, so a
huge caption is never kept. The rows themselves are kept (map-style access needs them), so memory grows with
the number of rows — with their captions already cut.
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

from clipforge.data.captions import cap_captions
from clipforge.data.fs import FileRefused, is_file, read_text
from clipforge.data.sample import Sample, file_meta
from clipforge.data.sources.base import Source
from clipforge.data.sources.files import MAX_SIDECAR_BYTES, parse_json
from clipforge.data.sources.folder import ext_of
from clipforge.data.sources.manifest_rows import CUT_FLAG, FORMATS, format_of, read_rows
from clipforge.errors import ClipforgeError, UsageError

IMAGE_COLS = ("image", "image_path", "filepath", "file", "filename", "path", "img", "jpg", "png")
CAPTION_COLS = ("captions", "caption", "text", "title", "txt")
LABEL_COLS = ("label", "class", "cls", "target")
ID_COLS = ("id", "key", "__key__", "uid")


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


class _Capped(NamedTuple):
    """A caption cell cut as its row was read: the captions and how many were cut."""
    captions: list
    n_cut: int


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
        limit = self.max_caption_bytes
        rows, columns = read_rows(path, fmt, bad, self._shrinker(caption_col),
                                  None if limit is None else ((caption_col,) if caption_col else CAPTION_COLS, limit))
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
        self.notes = self.open_notes.copy()

    def _shrinker(self, caption_col: str | None):
        """What read_rows applies to each row: every cell that may be the caption column (the one named, else
        each of CAPTION_COLS: a JSONL manifest's columns are known only once it is read) is parsed and cut to
        `max_caption_bytes` when it is longer, so no row keeps a huge caption."""
        limit = self.max_caption_bytes
        if limit is None:
            return None
        keys = (caption_col,) if caption_col is not None else CAPTION_COLS

        def long(cell) -> bool:
            if isinstance(cell, str):
                return len(cell) > limit
            return isinstance(cell, (list, tuple)) and any(isinstance(c, str) and len(c) > limit for c in cell)

        def shrink(row: dict) -> dict:
            for k in keys:
                flagged = row.pop(CUT_FLAG + k, False)  # cut already (parquet), to limit + 1 characters
                if k in row and (flagged or long(row[k])):
                    caps, n_cut = cap_captions(_captions(row[k]), limit)
                    row[k] = _Capped(caps, max(n_cut, int(bool(flagged))))
            return row

        return shrink

    def _load_classnames(self, classnames) -> list[str] | None:
        if isinstance(classnames, (list, tuple)):
            return [str(c) for c in classnames]
        path = classnames if isinstance(classnames, str) else os.path.join(
            os.path.dirname(os.path.abspath(self.path)), "classnames.txt")
        if isinstance(classnames, str) and not is_file(path):
            raise UsageError(f"class names file {path!r} does not exist or is not a file")
        if is_file(path):  # a regular file of at most MAX_SIDECAR_BYTES (never a FIFO or a huge file)
            try:
                text = read_text(path, MAX_SIDECAR_BYTES, path)
            except FileRefused as e:
                raise ClipforgeError(f"cannot read class names: {e.detail}") from None
            return [ln.strip() for ln in text.splitlines() if ln.strip()]
        return None

    def _build(self, rows: list[tuple[str, dict]]) -> None:
        # Labels given as names map to indices of `classnames` (sorted unique names when none were given).
        label_names = None
        if self.label_col is not None:
            raw = [r.get(self.label_col) for _, r in rows]
            if any(isinstance(v, str) and v.strip() and not _is_int(v) for v in raw):
                if self.classnames is None:
                    self.classnames = sorted({v.strip() for v in raw if isinstance(v, str) and v.strip()})
                label_names = {c: i for i, c in enumerate(self.classnames)}
        order: dict[str, int] = {}
        cut: dict[str, None] = {}  # ids with a caption cut, in order
        self.items: list[list] = []  # [id, image ref, captions, label, extra]
        for where, row in rows:
            img = row.get(self.image_col)
            if not isinstance(img, str) or not img.strip():
                self.open_skipped.add(where, "no_image")
                continue
            img = img.strip()
            key = row.get(self.id_col) if self.id_col else None
            key = str(key).strip() if key is not None and str(key).strip() else img
            cell = row.get(self.caption_col) if self.caption_col else None
            if isinstance(cell, _Capped):  # cut as the row was read
                caps, n_cut = list(cell.captions), cell.n_cut
            else:
                caps, n_cut = cap_captions(_captions(cell), self.max_caption_bytes)
            try:
                label = self._label(row.get(self.label_col), label_names) if self.label_col else None
            except ValueError:
                self.open_skipped.add(where, "bad_record")
                continue
            if n_cut:
                cut[key] = None
            if key in order:  # repeated rows add captions to the same image
                item = self.items[order[key]]
                item[2].extend(c for c in caps if c not in item[2])
                continue
            extra = {k: (list(v.captions) if isinstance(v, _Capped) else v) for k, v in row.items()
                     if k not in (self.image_col, self.caption_col, self.label_col, self.id_col)}
            order[key] = len(self.items)
            self.items.append([key, img, list(dict.fromkeys(caps)), label, extra])
        for key in cut:  # once per sample, however many of its rows or captions were cut
            self.open_notes.add(key, "caption_truncated")

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
