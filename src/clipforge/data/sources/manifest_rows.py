"""A manifest file as rows: CSV, TSV, JSONL (or a JSON list) and parquet, read with memory bounded.

A row that cannot be parsed — bad syntax, a NUL byte, bytes that are not UTF-8, the wrong number of cells —
goes to `bad` as `bad_record`; a problem of the whole file (no header, not a table at all) is one
`ClipforgeError`. Rows are named by their file line, `line N` (1-based; the CSV header is line 1; a record
spanning lines is named by its first), parquet rows by `row N`. Text manifests are read line by line, never
holding more than `MAX_LINE_BYTES` of one line (a longer line is a `bad_record`, skipped unread); parquet is
read by record batch, converted a few MB at a time. A whole-file JSON list is parsed at once, so it may hold
at most `MAX_JSON_LIST_BYTES`. The csv module refuses a cell over 128 KiB: that row is a `bad_record` too.
"""
from __future__ import annotations

import csv
import json
import os
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipforge.data.sources.files import parse_json
from clipforge.errors import ClipforgeError
from clipforge.json_file import describe_json_error

FORMATS = ("csv", "tsv", "jsonl", "parquet")
PARQUET_BATCH_ROWS = 1024
PARQUET_SLICE_BYTES = 16 * 2**20  # record batches are turned into Python rows this much at a time
MAX_LINE_BYTES = 64 * 2**20  # one line of a text manifest: a 64 MiB row is no pair, and decoding it costs 4x
MAX_JSON_LIST_BYTES = 64 * 2**20
_BOM = b"\xef\xbb\xbf"
CUT_FLAG = "\x00cut:"  # a column no manifest has: marks a parquet cell cut before it reached Python
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
    flagged in a column `CUT_FLAG + name` (see read_rows; the row's shrink pops it)."""
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
        batch = batch.append_column(CUT_FLAG + name, cut)
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
