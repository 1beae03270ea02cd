"""The index-kind interface and its registry (`INDEX_KINDS`).

A kind is one way of holding the collection's vectors in faiss. Its class declares its build parameters
(`options`, with defaults; None: sized from the collection when the index is created), the parameters a built
index may still change (`search_params`), and what the code around it needs to know: how its faiss object is
built, trained, sized in memory, how it forgets vectors, how shards of it merge. `VectorIndex`, the recall
tuner and the shard tools ask the kind; none of them tests a kind's name. A new kind is one file under
`kinds/` that registers its class, plus its import line in `kinds/__init__.py`:

    @INDEX_KINDS.register("flat")
    class Flat(IndexKind):
        def create(self, d, n, params):
            return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
"""

from __future__ import annotations

from typing import ClassVar, Optional

import faiss
import numpy as np

from clipforge.errors import UsageError
from clipforge.registry import Option, Registry

__all__ = ["INDEX_KINDS", "IndexKind", "index_kind"]

INDEX_KINDS = Registry("index kind", param="index_kind")


class IndexKind:
    """One kind of faiss index. Subclasses set the class attributes and implement `create` and `memory`."""

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()      # build parameters and their defaults
    search_params: ClassVar[tuple[str, ...]] = ()   # what `set_search_params` may change on a built index
    tune_param: ClassVar[Optional[str]] = None      # what `tune_recall` raises until recall is met (None: exact)
    shared_training: ClassVar[bool] = False         # shards must start from one trained template to merge
    merge_refusal: ClassVar[Optional[str]] = None   # why shards of this kind cannot merge into one index

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def create(self, d: int, n: int, params: dict) -> faiss.Index:
        """An empty faiss index of dimension d meant for n vectors; fills the sized parameters of `params`
        (all of the kind's parameters, defaults included) in place."""
        raise NotImplementedError

    def memory(self, n: int, d: int, params: dict) -> int:
        """Bytes an index of this kind holds for n vectors (`params`: all of them, defaults included)."""
        raise NotImplementedError

    def set_search_param(self, index: faiss.Index, params: dict, name: str, value) -> None:
        """Apply one of `search_params` (already recorded in `params`) to the faiss index."""

    def marks_removed(self, index: faiss.Index) -> bool:
        """Whether removing a vector marks its id -1 in an id map (graph and refined indexes cannot delete
        rows) instead of deleting it."""
        return isinstance(index, faiss.IndexIDMap2)

    def train_size(self, params: dict) -> int:
        """Rows of the random sample `VectorIndex.build` trains on (kinds that need training)."""
        return 0

    def train(self, index: faiss.Index, sample: np.ndarray, params: dict, seed: int) -> None:
        """Train an untrained index on the sample rows (kinds whose faiss index starts untrained)."""

    def tune_limit(self, n: int, params: dict) -> int:
        """The largest useful value of `tune_param` for an index of n vectors."""
        return n

    def merge(self, base: faiss.Index, other: faiss.Index) -> None:
        """Append other's vectors to base (both copies of one template); other may be emptied."""
        raise UsageError(f"merge: {self.merge_refusal or f'{self.name} indexes cannot be merged into one'}")

    def codes_in_lists(self, index: faiss.Index) -> bool:
        """Whether every code lives in IVF inverted lists (which a merge can stream into one file on disk)."""
        return False


_INSTANCES: dict[str, IndexKind] = {}


def index_kind(name: str) -> IndexKind:
    """The registered kind `name`; another name is a one-line error listing the kinds."""
    if name not in INDEX_KINDS:
        raise UsageError(f"index kind {name!r}: choose from {INDEX_KINDS.names()}")
    if name not in _INSTANCES:
        _INSTANCES[name] = INDEX_KINDS.get(name)()
    return _INSTANCES[name]
