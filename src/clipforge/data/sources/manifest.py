"""Pair / label manifests: CSV, TSV, JSONL (or a JSON list) and parquet.

One row names an image (relative paths resolve against the manifest's folder, or `root=`) and gives captions
and/or a label. Several captions per image come either as a list cell (a JSON list in CSV) or as repeated
rows for the same image, which are merged in file order. The sample id is the `id` column when there is
one, else the image path as written in the manifest.

Columns are found by common names unless given (`image_col=`, `caption_col=`, `label_col=`, `id_col=`); a
named column that is missing is a `UsageError` listing the columns that exist. A row that cannot be parsed
— bad syntax, a NUL byte, bytes that are not UTF-8, a number too long to convert, the wrong number of cells —
is skipped and counted as `bad_record`, never a crash, never a silent drop; a problem of the whole file (no
header, not a table at all) is one `ClipforgeError`. Rows are named by their file line, `line N` (1-based;
the CSV header is line 1; a record spanning lines is named by its first), parquet rows by `row N`.

Each caption is cut to `max_caption_bytes` (`caption_truncated` in `open_notes`) as its row is read, so a
huge caption is never kept. Text manifests are read line by line, never holding more than `MAX_LINE_BYTES` of
one line (a longer line is a `bad_record`, skipped unread); parquet is read by record batch, converted a few
MB at a time. A whole-file JSON list is parsed at once, so it may hold at most `MAX_JSON_LIST_BYTES` (write
more as JSON Lines). The rows themselves are kept (map-style access needs them), so memory grows with the
number of rows — with their captions already cut. The csv module refuses a cell over 128 KiB: that row is a
`bad_record` too.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipforge.data.captions import cap_captions
from clipforge.data.fs import FileRefused, is_file, read_text
from clipforge.data.sample import Sample, file_meta
from clipforge.data.sources.base import Source
from clipforge.data.sources.files import MAX_SIDECAR_BYTES, parse_json
from clipforge.json_file import describe_json_error
from clipforge.data.sources.folder import ext_of
from clipforge.errors import ClipforgeError, UsageError

IMAGE_COLS = ("image", "image_path", "filepath", "file", "filename", "path", "img", "jpg", "png")
CAPTION_COLS = ("captions", "caption", "text", "title", "txt")
LABEL_COLS = ("label", "class", "cls", "target")
ID_COLS = ("id", "key", "__key__", "uid")
FORMATS = ("csv", "tsv", "jsonl", "parquet")
PARQUET_BATCH_ROWS = 1024
PARQUET_SLICE_BYTES = 16 * 2**20  # record batches are turned into Python rows this much at a time
MAX_LINE_BYTES = 64 * 2**20  # one line of a text manifest: a 64 MiB row is no pair, and decoding it costs 4x
MAX_JSON_LIST_BYTES = 64 * 2**20
_BOM = b"\xef\xbb\xbf"
_CUT_FLAG = "\x00cut:"  # a column no manifest has: marks a parquet cell cut before it reached Python
# A NUL byte, or an undecodable byte (decoded with surrogateescape to U+DC80..U+DCFF; valid UTF-8 never
# decodes to a surrogate): a row holding one is not text.
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def format_of(path: str) -> str | None:
    lower = path.lower()
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if lower.endswith(suffix):
            return fmt
    return None


def read_rows(path: str, fmt: str, bad: list[tuple[str, str]], shrink=None,
              cut: tuple[tuple[str, ...], int] | None = None) -> tuple[list[tuple[str, dict]], list[str]]:
    """All rows as (where, row dict) plus the column names; unparseable rows go to `bad` as (where, reason).
    `where` is `line N` (text manifests) or `row N` (parquet). `shrink(row)`, when given, is applied to each
    row as it is read (before the next is), e.g. to cut its captions. `cut` = (columns, n): parquet string
    cells of those columns longer than n characters reach Python as their first n + 1 (JSON-list cells,
    starting with "[", whole), so a huge cell is never converted."""
    shrink = shrink or (lambda row: row)
    if fmt == "parquet":
        return _read_parquet(path, shrink, cut)
    try:
        if fmt in ("csv", "tsv"):
            return _read_delimited(path, "\t" if fmt == "tsv" else ",", bad, shrink)
        return _read_jsonl(path, bad, shrink)
    except OSError as e:
        raise ClipforgeError(f"cannot read manifest {path}: {e.strerror or e}") from None


def _cut_long_cells(batch, names, n: int):
    """`batch` with the long plain-text cells of columns `names` trimmed and cut to n + 1 characters, each cut
    flagged in a column `_CUT_FLAG + name` (see read_rows; the row's shrink pops it)."""
    for name in names:
        i = batch.schema.get_field_index(name)
        if i < 0 or not (pa.types.is_string(batch.schema.types[i]) or pa.types.is_large_string(batch.schema.types[i])):
            continue
        col = batch.column(i)
        lengths = pc.utf8_length(col)
        longest = pc.max(lengths).as_py()
        if longest is None or longest <= n:
            continue
        reach = 4 * n + 64  # trimmed from a head this long: a huge cell is never copied whole
        head = pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(col, 0, reach))
        listy = pc.starts_with(head, "[")  # a JSON list of captions: kept whole, parsed before it is cut
        cut = pc.fill_null(pc.and_(pc.invert(listy), pc.or_(pc.greater(pc.utf8_length(head), n),
                                                             pc.greater(lengths, reach))), False)
        batch = batch.set_column(i, name, pc.if_else(cut, pc.utf8_slice_codeunits(head, 0, n + 1), col))
        batch = batch.append_column(_CUT_FLAG + name, cut)
    return batch


def _read_parquet(path: str, shrink, cut) -> tuple[list[tuple[str, dict]], list[str]]:
    rows: list[tuple[str, dict]] = []
    try:
        pf = pq.ParquetFile(path)
        columns = list(pf.schema_arrow.names)
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            if cut is not None:
                batch = _cut_long_cells(batch, *cut)
            # a few MB of Python objects at a time: a batch of huge cells is not converted whole
            step = max(1, int(batch.num_rows * PARQUET_SLICE_BYTES // max(batch.nbytes, 1)))
            for i in range(0, batch.num_rows, step):
                rows.extend((f"row {len(rows) + 1}", shrink(row)) for row in batch.slice(i, step).to_pylist())
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a broken file
        raise ClipforgeError(f"cannot read parquet manifest {path}: {e}") from None
    return rows, columns


def _lines(f, first: bool = True):
    """The lines of a binary file (split at b"\n"), each whole or None when over `MAX_LINE_BYTES` — then
    skipped to its end without being held. A leading byte-order mark is dropped."""
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if first and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        first = False
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while True:
                rest = f.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
        else:
            yield raw


class _TextLines:
    """`_lines` decoded for the csv module (undecodable bytes kept as surrogates for `_NOT_TEXT` to find,
    and split at b"\r" too, as text files opened with newline="" are); `over` counts the lines over the cap,
    each given to csv as an empty line so line numbers stay right."""

    def __init__(self, f):
        self.it, self.over, self.queue = _lines(f), 0, []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while not self.queue:
            raw = next(self.it)
            if raw is None:
                self.over += 1
                return "\n"
            self.queue = [p.decode("utf-8", "surrogateescape") for p in raw.splitlines(keepends=True)][::-1]
        return self.queue.pop()


def _read_delimited(path: str, delim: str, bad, shrink) -> tuple[list[tuple[str, dict]], list[str]]:
    # surrogateescape: an undecodable byte spoils its row only (found by _NOT_TEXT), not the whole file
    with open(path, "rb") as f:
        lines = _TextLines(f)
        reader = csv.reader(lines, delimiter=delim)
        try:
            header = next(reader)
        except StopIteration:
            raise ClipforgeError(f"manifest {path} is empty (no header row)") from None
        except csv.Error as e:
            raise ClipforgeError(f"manifest {path}: bad header: {e}") from None
        if any(_NOT_TEXT.search(h) for h in header):
            raise ClipforgeError(f"manifest {path}: its header line holds NUL or non-UTF-8 bytes: "
                                 f"is it really a text table?")
        if lines.over:
            raise ClipforgeError(f"manifest {path}: its header line is over {MAX_LINE_BYTES} bytes: is it "
                                 f"really a text table?")
        header = [h.strip() for h in header]
        rows = []
        while True:
            where, over = f"line {reader.line_num + 1}", lines.over  # the record's first line
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error:  # e.g. a field over the csv module's size limit: skip that row
                bad.append((where, "bad_record"))
                continue
            if lines.over != over:  # a line of this record was over the cap (and never read)
                bad.append((where, "bad_record"))
                continue
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header) or any(_NOT_TEXT.search(c) for c in cells):
                bad.append((where, "bad_record"))
                continue
            rows.append((where, shrink(dict(zip(header, cells)))))
    return rows, header


def _read_jsonl(path: str, bad, shrink) -> tuple[list[tuple[str, dict]], list[str]]:
    rows, columns = [], {}

    def add(where: str, obj) -> None:
        if not isinstance(obj, dict):
            bad.append((where, "bad_record"))
            return
        columns.update(dict.fromkeys(obj))
        rows.append((where, shrink(obj)))

    with open(path, "rb") as f:
        head = f.read(64 * 1024)
        if head.startswith(_BOM):
            head = head[len(_BOM):]
        if head.lstrip()[:1] == b"[":  # a whole-file JSON list of objects
            size = os.fstat(f.fileno()).st_size
            if size > MAX_JSON_LIST_BYTES:
                raise ClipforgeError(f"manifest {path} is a JSON list of {size} bytes, over the "
                                     f"{MAX_JSON_LIST_BYTES} one may hold: write it as JSON Lines (one object a "
                                     f"line)")
            for where, obj in _json_list(path, head + f.read()):
                add(where, obj)
        else:
            f.seek(0)
            for n, raw in enumerate(_lines(f), 1):  # split at b"\n" only (U+2028 stays inside a row)
                if raw is None:  # over MAX_LINE_BYTES: never held
                    bad.append((f"line {n}", "bad_record"))
                    continue
                if not raw.strip():
                    continue
                try:
                    obj = parse_json(raw)
                except ValueError:
                    bad.append((f"line {n}", "bad_record"))
                    continue
                del raw
                add(f"line {n}", obj)
    return rows, list(columns)


def _json_list(path: str, data: bytes) -> list[tuple[str, object]]:
    """The elements of a JSON list, each with the line it starts on. One syntax error spoils the whole file
    (there is no next row to resynchronise on): a `ClipforgeError` saying what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ClipforgeError(f"manifest {path} is not valid JSON: {describe_json_error(e)}") from None
    decoder, ws = json.JSONDecoder(), re.compile(r"[ \t\n\r]*")
    out: list[tuple[str, object]] = []
    line, counted = 1, 0
    try:
        i = ws.match(text).end()
        if not text.startswith("[", i):
            raise json.JSONDecodeError("Expecting '['", text, i)
        i = ws.match(text, i + 1).end()
        if text.startswith("]", i):
            i += 1
        else:
            while True:
                line += text.count("\n", counted, i)
                counted = i
                obj, i = decoder.raw_decode(text, i)
                out.append((f"line {line}", obj))
                i = ws.match(text, i).end()
                if text.startswith(",", i):
                    i = ws.match(text, i + 1).end()
                    continue
                if text.startswith("]", i):
                    i += 1
                    break
                raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        if ws.match(text, i).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
    except (RecursionError, ValueError) as e:
        raise ClipforgeError(f"manifest {path} is not valid JSON: {describe_json_error(e)}") from None
    return out


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
                flagged = row.pop(_CUT_FLAG + k, False)  # cut already (parquet), to limit + 1 characters
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
