"""index.faiss of an index directory, (re)built from its store's live image embeddings, its recall measured.

The kind is chosen from the collection's size and a memory budget (`index_choice.choose_index`) unless named;
approximate kinds are tuned until recall@10 against exact search reaches a target (`recall.tune_recall`), and a
measured recall below `min_recall` warns.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import numpy as np

from clipforge.errors import UsageError
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.index_choice import IndexSpec, choose_index
from clipforge.retrieval.index_dir import INDEX_FILE
from clipforge.retrieval.kinds import INDEX_KINDS
from clipforge.retrieval.recall import tune_recall
from clipforge.retrieval.store import EmbeddingStore

__all__ = ["build_faiss", "check_min_recall", "parse_size", "MIN_RECALL", "RECALL_QUERIES"]

RECALL_QUERIES = 1000
MIN_RECALL = 0.9  # below this recall@10 a build warns: one search in ten loses a true neighbour or more


def parse_size(text: str | int | None) -> int | None:
    """'4GB', '512MiB', '2e9', 1000 -> bytes (None stays None). Units are powers of 1024."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+(?:e\d+)?)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise UsageError(f"memory size {text!r}: expected a number with an optional unit, e.g. 4GB or 512MB")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def build_faiss(index_dir, max_memory=None, kind: str = "auto", target_recall: float = 0.95,
                seed: int = 0, min_recall: float = MIN_RECALL) -> dict:
    """(Re)build index.faiss from the store's live image embeddings; returns what goes in index.json.

    Approximate kinds are tuned (efSearch / nprobe) until recall@10 against exact search reaches
    target_recall on up to 1000 stored vectors used as queries, and the measured figure is recorded
    ("recall@10"; a flat index records 1.0 unmeasured: it is exact search, and checking it is not free at every
    update: 256 sample queries took 14 s at 200k x 512 on 2 busy cores). Below `min_recall` (e.g. IVF-PQ codes without
    a re-ranking store, all a small `max_memory` leaves room for) the build warns and records the warning.
    """
    check_min_recall(min_recall)
    root = Path(index_dir)
    store = EmbeddingStore.open(root)
    x, ids = store.load("img")  # (N, D) float32, (N,) int64
    n, d = x.shape
    if kind == "auto":
        spec = choose_index(n, d, parse_size(max_memory))
    elif kind in INDEX_KINDS:
        spec = IndexSpec(kind, {}, "chosen by the user")
    else:
        raise UsageError(f"index kind {kind!r}: choose from {['auto', *INDEX_KINDS.names()]}")
    t0 = time.perf_counter()
    vi = VectorIndex.build(x, ids, spec.kind, **spec.params)
    out = {"kind": spec.kind, "reason": spec.reason, "n": n, "dim": d,
           "build_s": round(time.perf_counter() - t0, 3), "store_generation": store.generation}
    out["min_recall"] = min_recall
    if spec.kind == "flat":
        out["recall@10"] = {"recall@10": 1.0, "k": 10, "exact": True, "kind": "flat"}
    elif n:
        rng = np.random.default_rng(seed)
        q = x[rng.choice(n, min(n, RECALL_QUERIES), replace=False)]
        out["recall@10"] = {k: v for k, v in tune_recall(vi, x, q, target_recall, 10, ids).items()
                            if k != "params"}
        low = _low_recall(out, min_recall, chosen=kind == "auto")
        if low:
            out["warning"] = low
            warnings.warn(low, stacklevel=2)
    out["params"] = dict(vi.params)
    vi.info.update(out)
    vi.save(root / INDEX_FILE)
    return out


def check_min_recall(min_recall) -> None:
    if not isinstance(min_recall, (int, float)) or not 0.0 <= min_recall <= 1.0:
        raise UsageError(f"`min_recall` must be a number in [0, 1], got {min_recall!r}")


def _low_recall(out: dict, min_recall: float, chosen: bool) -> str | None:
    """The one-line warning for a measured recall@10 below `min_recall` (None when it is not). `chosen`: the
    kind came from the memory budget (advice: a larger budget), else the user named it (advice: another)."""
    rec = out["recall@10"]
    if rec["recall@10"] >= min_recall:
        return None
    todo = ("raise `max_memory` so that a re-ranking store fits, or choose `index_kind` flat (exact search)"
            if chosen else "choose another `index_kind` (flat: exact search; ivf_pqfs: re-ranks with the exact "
            "vectors)")
    return (f"the {out['kind']} index finds {rec['recall@10']:.3f} of the exact top 10 (recall@10 on "
            f"{rec['n_queries']} of its own vectors, below `min_recall` {min_recall:g}; {out['reason']}): {todo}")
