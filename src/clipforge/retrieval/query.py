"""Queries: a small expression language over text and image terms, metadata filters, and a Searcher that
turns a query vector into k filtered, de-duplicated, paginated hits.

Query grammar (whitespace between tokens is free):

    query  := plain | expr
    plain  := any text not starting like an expr     -> one text term, weight 1   (cats on a sofa)
    expr   := [sign] term (sign term)*                                  ("golden retriever" + 0.5*"beach")
    sign   := '+' | '-'
    term   := [number '*'] atom | atom '*' number                      (0.5*"beach", "beach"*0.5)
    atom   := string              text; an image when it names an existing image file (and paths are allowed)
            | 'img:' (string|bare)  an image file                      (img:photos/dog.jpg, img:"my dog.png")
            | 'text:' string      always text, even if such a file exists
    string := "..." or '...'      a backslash escapes the quote or a backslash
    number := 2, 0.5, .5, 1e-1

A query is an expr when it starts with a quote, `img:`, `text:`, a sign, or `number *`; anything else is plain
text, so everyday queries need no quoting. Term embeddings are L2-normalised, summed with their signed
weights, and the sum normalised again.

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
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipforge.data.sources.folder import IMAGE_EXTS
from clipforge.encode import open_image
from clipforge.errors import ClipforgeError, UsageError

_EXPR_START = re.compile(r"\s*(?:[+-]\s*)?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*\*\s*)?(?:[\"']|img:|text:)")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BARE = re.compile(r"[^\s+*]+")


@dataclass
class Term:
    kind: str        # "text" | "image"
    value: Any       # text, an image path, raw image bytes, or a PIL image
    weight: float = 1.0
    pos: int = 0     # column in the query string (for messages)


def _fail(query: str, pos: int, msg: str):
    raise UsageError(f"query error at column {pos + 1}: {msg}\n  {query}\n  {' ' * pos}^")


def _is_image_file(s: str, base: Path | None) -> Path | None:
    p = Path(s).expanduser()
    p = p if p.is_absolute() or base is None else base / p
    return p if p.suffix.lower().lstrip(".") in IMAGE_EXTS and p.is_file() else None


def parse_query(query: str, allow_paths: bool = True, base_dir: str | Path | None = None) -> list[Term]:
    """Parse a query string into weighted terms (see the module docstring for the grammar).

    allow_paths=False (for requests from a network) makes `img:` an error and every string text, so no
    request can make the process read a file.
    """
    if not query.strip():
        raise UsageError("empty query")
    base = Path(base_dir) if base_dir is not None else None
    if not _EXPR_START.match(query):
        return [Term("text", query.strip(), 1.0, len(query) - len(query.lstrip()))]

    pos, n, terms = 0, len(query), []

    def skip():
        nonlocal pos
        while pos < n and query[pos].isspace():
            pos += 1

    def string() -> str:
        nonlocal pos
        quote, start, out = query[pos], pos, []
        pos += 1
        while pos < n and query[pos] != quote:
            if query[pos] == "\\" and pos + 1 < n and query[pos + 1] in (quote, "\\"):
                pos += 1
            out.append(query[pos])
            pos += 1
        if pos >= n:
            _fail(query, start, f"unterminated string (missing closing {quote})")
        pos += 1
        return "".join(out)

    def number() -> float | None:
        nonlocal pos
        m = _NUMBER.match(query, pos)
        if not m:
            return None
        pos = m.end()
        return float(m.group())

    def atom() -> Term:
        nonlocal pos
        start = pos
        if query.startswith("img:", pos):
            if not allow_paths:
                _fail(query, start, "image paths are not allowed here (send the image itself)")
            pos += 4
            if pos < n and query[pos] in "\"'":
                path = string()
            else:
                m = _BARE.match(query, pos)
                if not m:
                    _fail(query, pos, "expected an image path after img:")
                path, pos = m.group(), m.end()
            found = _is_image_file(path, base)
            if found is None:
                _fail(query, start, f"no image file {path!r} (extensions: {' '.join(sorted(IMAGE_EXTS))})")
            return Term("image", str(found), 1.0, start)
        if query.startswith("text:", pos):
            pos += 5
            if pos >= n or query[pos] not in "\"'":
                _fail(query, pos, "expected a quoted string after text:")
            return Term("text", string(), 1.0, start)
        if pos < n and query[pos] in "\"'":
            s = string()
            found = _is_image_file(s, base) if allow_paths else None
            if not s.strip():
                _fail(query, start, "empty string term")
            return Term("image", str(found), 1.0, start) if found else Term("text", s, 1.0, start)
        _fail(query, pos, "expected a quoted string, img:PATH or text:\"...\"")

    sign = 1.0
    skip()
    if pos < n and query[pos] in "+-":
        sign = -1.0 if query[pos] == "-" else 1.0
        pos += 1
    while True:
        skip()
        w = number()
        if w is not None:
            skip()
            if pos >= n or query[pos] != "*":
                _fail(query, pos, "expected '*' after a weight")
            pos += 1
            skip()
        term = atom()
        skip()
        if pos < n and query[pos] == "*":
            if w is not None:
                _fail(query, pos, "a term takes one weight")
            pos += 1
            skip()
            w = number()
            if w is None:
                _fail(query, pos, "expected a number after '*'")
        term.weight = sign * (1.0 if w is None else w)
        terms.append(term)
        skip()
        if pos >= n:
            return terms
        if query[pos] not in "+-":
            _fail(query, pos, "expected '+' or '-' between terms (quote text with spaces: \"a b\")")
        sign = -1.0 if query[pos] == "-" else 1.0
        pos += 1


def compose(text: str | None = None, image: Any = None, text_weight: float = 1.0,
            image_weight: float = 1.0) -> list[Term]:
    """Terms for an image + text composed query (image: path, bytes or PIL image)."""
    terms = ([Term("text", text, text_weight)] if text else []) + \
            ([Term("image", image, image_weight)] if image is not None else [])
    if not terms:
        raise UsageError("a query needs text, an image, or both")
    return terms


def embed_query(terms: Sequence[Term], encode_text: Callable[[list[str]], np.ndarray],
                encode_image: Callable[[list], np.ndarray] | None = None) -> np.ndarray:
    """Weighted sum of normalised term embeddings, normalised: -> (D,) float32.

    encode_text(list[str]) -> (n, D); encode_image(list[PIL.Image]) -> (n, D). Each is called once. Image
    terms (a path, bytes or a PIL image) are opened with `clipforge.encode.open_image`: the same decoder as
    the index build, so a file gives the same pixels (EXIF orientation included) on every path.
    """
    texts = [t for t in terms if t.kind == "text"]
    images = [t for t in terms if t.kind == "image"]
    if images and encode_image is None:
        raise UsageError("this query has image terms but no image encoder was given")
    parts, weights = [], []
    if texts:
        parts.append(np.asarray(encode_text([t.value for t in texts]), dtype=np.float32))
        weights += [t.weight for t in texts]
    if images:
        parts.append(np.asarray(encode_image([open_image(t.value) for t in images]), dtype=np.float32))
        weights += [t.weight for t in images]
    e = np.concatenate(parts)  # (n_terms, D)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    v = (np.asarray(weights, dtype=np.float32)[:, None] * e).sum(0)  # (D,)
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        raise UsageError("the query's terms cancel out (their weighted sum is zero)")
    return v / norm


def compose_vector(terms: Sequence[Term], encode_text: Callable[[list[str]], np.ndarray],
                   encode_image: Callable[[list], np.ndarray] | None = None,
                   like: Sequence[tuple[np.ndarray, float]] = ()) -> np.ndarray:
    """The unit query vector of terms plus "more like this" items: the terms' `embed_query` vector (when
    there are terms) plus weight * each item vector (D,), normalised. Every stage of a search (the index's
    model, a reranker's) builds its query this way, from the same terms."""
    if not terms and not like:
        raise UsageError("a query needs text, an image, terms, or `like` (an item id)")
    v = embed_query(terms, encode_text, encode_image) if terms else 0.0
    for vec, weight in like:
        v = v + weight * np.asarray(vec, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        raise UsageError("the query's terms cancel out (their weighted sum is zero)")
    return v / norm


# ---- metadata filters -------------------------------------------------------------------------------

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


# ---- searching --------------------------------------------------------------------------------------

_INT64 = np.iinfo(np.int64)


def as_ids(ids) -> np.ndarray:
    """Item ids -> (n,) int64. An id outside int64 (a request may send 2**70) cannot name any item: it becomes
    -1, which no item has, so lookups report "no such item" instead of overflowing."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "i":
        return ids.astype(np.int64, copy=False)
    out = np.empty(len(ids), np.int64)
    for j, i in enumerate(ids):
        v = int(i)
        out[j] = v if _INT64.min <= v <= _INT64.max else -1
    return out


@dataclass
class Hit:
    rank: int       # 0-based over the whole result list (offset included)
    id: int
    score: float    # cosine similarity to the query, by the model of the stage that scored it
    metadata: dict = field(default_factory=dict)
    stage: int = 1  # 1: the index's own model; 2: a reranker's model (see retrieval/rerank)
    stage1_score: Optional[float] = None  # the first stage's score of a re-scored hit

    def to_dict(self, item: Optional[dict] = None) -> dict:
        """The one JSON form of a hit (`clipforge search` prints it, the HTTP service sends it): its item's
        fields — `item`, a form of them the caller prepared (the service's: no server paths), else the
        metadata — then rank, id, score, stage, and stage1_score when a second stage re-scored it."""
        out = {**(self.metadata if item is None else item), "rank": self.rank, "id": self.id, "score": self.score,
               "stage": self.stage}
        if self.stage1_score is not None:
            out["stage1_score"] = self.stage1_score
        return out


class Searcher:
    """Index + metadata (+ vectors for de-duplication and exact filtered search).

    index: anything with `search(q (n, D), k) -> (scores, ids)` and len(); metadata: pa.Table with an `id`
    column; vectors / vector_ids: (N, D) unit rows and their ids (e.g. EmbeddingStore.load()).
    """

    exact_subset_max = 20_000  # filters that leave at most this many rows are searched exactly
    row_cache = 65_536  # metadata rows kept as dicts (popular hits): a pyarrow gather per search costs more

    def __init__(self, index, metadata: pa.Table | None = None, vectors: np.ndarray | None = None,
                 vector_ids: np.ndarray | None = None):
        self.index, self.metadata = index, metadata
        self.vectors = None if vectors is None else np.asarray(vectors, dtype=np.float32)
        if self.vectors is not None:
            vid = np.asarray(vector_ids, dtype=np.int64)
            self._v_order = np.argsort(vid)
            self._v_sorted = vid[self._v_order]
        if metadata is not None:
            mid = metadata.column("id").to_numpy().astype(np.int64)
            self._m_ids, self._m_order = mid, np.argsort(mid)
            self._m_sorted = mid[self._m_order]
        self._row_dicts: dict[int, dict] = {}  # id -> metadata row (without `id`), at most row_cache of them
        self._row_lock = threading.Lock()

    @staticmethod
    def _rows(sorted_ids, order, ids) -> np.ndarray:
        ids = as_ids(ids)
        if not len(sorted_ids):  # an emptied index: no id is known (order[pos] would be out of bounds)
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    def known(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: which ids are live items (in the vectors, else the metadata, given)."""
        if self.vectors is not None:
            return self._rows(self._v_sorted, self._v_order, ids) >= 0
        if self.metadata is not None:
            return self._rows(self._m_sorted, self._m_order, ids) >= 0
        return np.asarray(ids) >= 0

    def vectors_of(self, ids) -> np.ndarray:
        rows = self._rows(self._v_sorted, self._v_order, ids)
        if (rows < 0).any():
            raise ClipforgeError("some hit ids have no stored vector (index and store out of sync?)")
        return self.vectors[rows]

    def search(self, q: np.ndarray, k: int = 10, offset: int = 0, filters: Sequence[Filter | str] = (),
               dedup: float | None = None, hidden: Sequence[str] = ()) -> list[Hit]:
        """Hits offset..offset+k-1 of the ranked list, after filters and near-duplicate collapsing.

        dedup: drop a hit whose cosine to a higher-ranked kept hit exceeds this (e.g. 0.95).
        hidden: metadata columns the filters may not name (see `parse_filter`).
        Filtering happens after retrieval, fetching more until enough hits survive; when the filters leave
        few rows (<= exact_subset_max) and vectors are available, those rows are scored exactly instead.
        """
        if k < 1 or offset < 0:
            raise UsageError(f"need k >= 1 and offset >= 0, got k={k}, offset={offset}")
        if dedup is not None and not 0.0 <= dedup <= 1.0:
            raise UsageError(f"dedup is a cosine similarity threshold in [0, 1], got {dedup}")
        if dedup is not None and self.vectors is None:
            raise UsageError("near-duplicate collapsing needs the stored vectors (pass vectors=)")
        q = np.asarray(q, dtype=np.float32).reshape(1, -1)  # (1, D)
        need = offset + k
        allowed = None
        if filters:
            if self.metadata is None:
                raise UsageError("filters need metadata")
            allowed = np.sort(self._m_ids[filter_mask(self.metadata, filters, hidden)])
            if len(allowed) == 0:
                return []
        if allowed is not None and self.vectors is not None and len(allowed) <= self.exact_subset_max:
            scores = self.vectors_of(allowed) @ q[0]  # (n_allowed,)
            order = np.argsort(-scores, kind="stable")
            kept = self._collapse(allowed[order], scores[order], dedup, need)
        else:
            total = len(self.index) + getattr(self.index, "n_dead", 0)
            fetch = min(total, need * (4 if (allowed is not None or dedup is not None) else 1))
            while True:
                s, i = self.index.search(q, max(1, fetch))
                ids, sc = i[0], s[0]
                ok = self.known(ids)  # -1 padding, and ids an index file still holds after their deletion
                if allowed is not None:
                    ok &= np.isin(ids, allowed)
                kept = self._collapse(ids[ok], sc[ok], dedup, need)
                if len(kept) >= need or fetch >= total:
                    break
                fetch = min(total, fetch * 4)
        page = kept[offset:need]
        meta = self.metadata_rows([i for i, _ in page])
        return [Hit(offset + r, int(i), float(s), m) for r, ((i, s), m) in enumerate(zip(page, meta))]

    def _collapse(self, ids: np.ndarray, scores: np.ndarray, dedup: float | None, need: int) -> list:
        """Greedy in rank order: keep a hit unless it is a near-duplicate of a kept one."""
        if dedup is None:
            return list(zip(ids[:need].tolist(), scores[:need].tolist()))
        kept = []
        kept_vecs = np.empty((min(need, len(ids)), self.vectors.shape[1]), np.float32)  # (n_kept, D), filled in order
        for start in range(0, len(ids), 256):  # vectors fetched in blocks; stop early once enough survive
            block = ids[start:start + 256]
            vecs = self.vectors_of(block)  # (b, D)
            for j, v in enumerate(vecs):
                n = len(kept)
                if n and float(np.max(kept_vecs[:n] @ v)) > dedup:
                    continue
                kept.append((int(block[j]), float(scores[start + j])))
                kept_vecs[n] = v
                if len(kept) >= need:
                    return kept
        return kept

    def metadata_rows(self, ids: list[int]) -> list[dict]:
        """Each id's metadata row as a dict without `id` ({} for an unknown id). Treat the dicts as read-only:
        they are shared through a cache."""
        if self.metadata is None or not ids:
            return [{} for _ in ids]
        with self._row_lock:
            cached = [self._row_dicts.get(int(i)) for i in ids]
        missing = [i for i, c in zip(ids, cached) if c is None]
        if missing:
            rows = self._rows(self._m_sorted, self._m_order, missing)
            found = self.metadata.take(pa.array(rows[rows >= 0])).drop_columns(["id"]).to_pylist()  # one gather
            it = iter(found)
            fresh = {int(i): (next(it) if r >= 0 else {}) for i, r in zip(missing, rows)}
            with self._row_lock:
                for i, r in zip(missing, rows):
                    if r >= 0:
                        self._row_dicts[int(i)] = fresh[int(i)]
                while len(self._row_dicts) > self.row_cache:
                    self._row_dicts.pop(next(iter(self._row_dicts)))  # oldest first
            cached = [c if c is not None else fresh[int(i)] for i, c in zip(ids, cached)]
        return cached
