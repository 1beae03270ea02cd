"""The query language: a small expression language over text and image terms -> weighted `Term`s.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipforge.data.sources.folder import IMAGE_EXTS
from clipforge.errors import UsageError

__all__ = ["Term", "parse_query", "compose"]

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
