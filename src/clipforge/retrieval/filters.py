"""The filter language: metadata filters over the collection's parquet metadata.

Filters: COLUMN OP VALUE with OP one of  =  !=  <  <=  >  >=  ~ (glob, e.g. path~*/beach/*)  *= (substring,
case-insensitive, e.g. caption*=dog). `path` means the first of path / image_path / url the metadata has.
`hidden` columns (the HTTP service passes the ones holding server paths, which it never shows) cannot be
filtered on, under any spelling the parser accepts (case and Unicode compatibility forms are folded), nor
reached through the `path` alias: a filter on one is refused, so a filter cannot probe what a result hides.
A filter's value is at most MAX_FILTER_CHARS long and a glob must compile, checked when the filter is parsed
(matching cost grows with the value's length; the HTTP service sets a lower cap).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipforge.errors import UsageError

__all__ = ["Filter", "parse_filter", "filter_mask", "MAX_FILTER_CHARS"]

_FILTER = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(!=|<=|>=|\*=|=|<|>|~)\s*(.*?)\s*$", re.S)
MAX_FILTER_CHARS = 4096  # a path's maximum length on Linux; longer values only cost matching time
_OPS = ("=", "!=", "<", "<=", ">", ">=", "~", "*=")
_PATH_COLUMNS = ("path", "image_path", "url")


def _glob_regex(glob: str) -> str:
    """Shell glob -> anchored RE2 pattern (* any run, ? one char, [...] a class; '/' is not special,
    so */beach/* matches at any depth). fnmatch.translate emits atomic groups that RE2 rejects."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        j = glob.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif j > 0:
            body = glob[i + 1:j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    # (?s): `.` also matches a newline, so `*` covers every name, even one with a newline in it
    return "(?s)^" + "".join(out) + "$"


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: Any

    def mask(self, table: pa.Table, hidden: Sequence[str] = ()) -> np.ndarray:
        """(N,) bool over the table's rows; a null value never matches. A `hidden` column (or the `path` alias
        resolving to one) is refused."""
        _refuse_hidden(self.column, hidden)
        col = self.column
        if col == "path" and col not in table.column_names:
            col = next((c for c in _PATH_COLUMNS if c in table.column_names), col)
        _refuse_hidden(col, hidden, self.column)
        if col not in table.column_names:
            shown = [c for c in table.column_names if not _is_hidden(c, hidden)]
            raise UsageError(f"filter on unknown column {self.column!r}; columns: {shown}")
        arr = table.column(col)
        if self.op == "~":
            m = pc.match_substring_regex(pc.cast(arr, pa.string()), _glob_regex(str(self.value)))
        elif self.op == "*=":
            m = pc.match_substring(pc.cast(arr, pa.string()), str(self.value), ignore_case=True)
        else:
            value = self.value
            if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise UsageError(f"filter {self.column}{self.op}{self.value}: column is numeric") from None
            elif pa.types.is_boolean(arr.type):
                value = str(value).lower() in ("1", "true", "yes")
            elif not isinstance(value, str):
                value = str(value)
            fn = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
                  ">": pc.greater, ">=": pc.greater_equal}[self.op]
            m = fn(arr, pa.scalar(value))
        return pc.fill_null(m, False).to_numpy(zero_copy_only=False).astype(bool)


def _column_key(name: str) -> str:
    """A column name as compared with `hidden` ones: NFKC-normalised and case-folded ("ＰＡＴＨ" -> "path")."""
    return unicodedata.normalize("NFKC", name).casefold()


def _is_hidden(column: str, hidden: Sequence[str]) -> bool:
    return bool(hidden) and _column_key(column) in {_column_key(h) for h in hidden}


def _refuse_hidden(column: str, hidden: Sequence[str], asked: str | None = None) -> None:
    if _is_hidden(column, hidden):
        via = f" (`{asked}` stands for it here)" if asked is not None and asked != column else ""
        raise UsageError(f"column {column!r} is not filterable here{via}: it is not shown in results")


def parse_filter(spec: str, max_chars: int = MAX_FILTER_CHARS, hidden: Sequence[str] = ()) -> Filter:
    """'width>=512', 'caption*=dog', 'path~*/beach/*', 'label=cat' -> Filter.

    Refuses (UsageError) a filter longer than `max_chars`, a glob that does not compile (e.g. `[z-a]`), and a
    filter on a `hidden` column (under any spelling: see `_column_key`), before any row is matched.
    """
    if not isinstance(spec, str):
        raise UsageError(f"a filter must be a string like 'caption*=dog', got {type(spec).__name__}")
    if len(spec) > max_chars:
        raise UsageError(f"filter of {len(spec)} characters is over the {max_chars} character limit")
    m = _FILTER.match(spec)
    if not m or not m.group(3):
        raise UsageError(f"filter {_clip(spec)!r}: expected COLUMN OP VALUE with OP one of {' '.join(_OPS)}")
    f = Filter(m.group(1), m.group(2), m.group(3))
    _refuse_hidden(f.column, hidden)
    if f.op == "~":
        try:  # RE2 (Arrow's engine) decides what compiles (an empty array would skip compiling)
            pc.match_substring_regex(pa.array([""], pa.string()), _glob_regex(f.value))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise UsageError(f"filter {_clip(spec)!r}: not a valid glob ({_clip(str(e), 200)})") from None
    return f


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."


def filter_mask(table: pa.Table, filters: Sequence[Filter | str], hidden: Sequence[str] = ()) -> np.ndarray:
    """AND of all filters -> (N,) bool; a filter on a `hidden` column is refused (UsageError)."""
    mask = np.ones(table.num_rows, dtype=bool)
    for f in filters:
        mask &= (parse_filter(f, hidden=hidden) if isinstance(f, str) else f).mask(table, hidden)
    return mask
