"""A search as one value: what `IndexSearcher.search` and `IndexSearcher.query_vector` take.

    searcher.search(SearchQuery("a red bicycle", k=10, filters=["path~*/2023/*"]))
    searcher.search("a red bicycle", k=10)        # the same: the text, then any SearchQuery field by name

Each caller builds one (the CLI from its flags, the HTTP service from a request body), so a new search
option is one field here, not a keyword argument threaded through every layer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from clipforge.retrieval.query_language import Term, parse_query

__all__ = ["SearchQuery"]


@dataclass(frozen=True)
class SearchQuery:
    text: Optional[str] = None       # the query language (`query_language.parse_query`): plain text or weighted terms
    image: Any = None                # a query image (path, bytes or PIL image), composed with the text
    k: int = 20                      # hits offset..offset+k-1
    offset: int = 0
    filters: Sequence = ()           # COLUMN OP VALUE strings (or parsed `filters.Filter`s), all must match
    dedup: Optional[float] = None    # collapse hits with cosine above this
    rerank: Optional[bool] = None    # False: the first stage only; None: the second stage when there is one
    text_weight: float = 1.0         # multiplies every term of `text`
    image_weight: float = 1.0
    terms: Sequence[Term] = ()       # extra weighted text / image terms
    like: Optional[int] = None       # an indexed item's id: more like this (its own vector is a term)
    like_weight: float = 1.0
    allow_paths: bool = True         # whether `text` may name image files (the HTTP service: never)
    base_dir: Any = None             # where relative image paths in `text` are looked up
    hidden_columns: Sequence[str] = ()  # columns `filters` may not name, beside the searcher's own

    @classmethod
    def of(cls, query: "SearchQuery | str | None" = None, image: Any = None, **fields) -> "SearchQuery":
        """`query` as a SearchQuery: one given (with `image` / `fields` replacing its own), or built from
        its text, `image` and `fields`."""
        if isinstance(query, cls):
            return dataclasses.replace(query, **({"image": image} if image is not None else {}), **fields)
        given = {**({"text": query} if query is not None else {}), **({"image": image} if image is not None else {})}
        if set(given) & set(fields):
            raise TypeError(f"{' and '.join(sorted(set(given) & set(fields)))} given twice")
        return cls(**given, **fields)

    def all_terms(self) -> list[Term]:
        """The query's weighted terms: `terms`, then those of `text` (times `text_weight`), then `image`."""
        out = list(self.terms)
        if self.text is not None and self.text.strip():
            for t in parse_query(self.text, allow_paths=self.allow_paths, base_dir=self.base_dir):
                t.weight *= self.text_weight
                out.append(t)
        if self.image is not None:
            out.append(Term("image", self.image, self.image_weight))
        return out
