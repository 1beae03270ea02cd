"""Second-stage reranking (INQUIRE-style two-stage retrieval): the index's own model returns the top
`rerank_k` candidates fast, and a second, stronger model (larger, or fine-tuned) re-scores only those.

    searcher = IndexSearcher("photos-index", rerank="runs/big/final", rerank_k=100)
    for hit in searcher.search("a heron catching a fish", k=10):
        hit.stage, hit.score, hit.stage1_score      # 2, the second model's cosine, the first model's

Rerankers are a registry (`RERANKERS`), one module per kind:
  model  a second CLIP model embeds the query and the candidates' stored image files through
         `clipforge.encode` (the index build's decoder: EXIF, limits), keeping an LRU cache of candidate
         embeddings (`model.py`)
  index  a second index directory built from the same source with the second model
         (`build_index(source, "runs/big/final", "idx-big")`): its stored embeddings looked up by item key,
         so no image is decoded at query time (`stored.py`)
`create_reranker(spec)` takes a Reranker, an index directory (kind "index") or any model reference (kind
"model"). `rerank_hits` re-orders candidates; those the second stage cannot score (file gone or unreadable,
key missing from the second index) follow the re-scored ones in first-stage order, with `stage` 1.
"""
from clipforge.retrieval.rerank import model, stored  # noqa: F401  (register the built-in kinds)
from clipforge.retrieval.rerank.base import DEFAULT_RERANK_K, RERANKERS, Reranker, create_reranker, rerank_hits

__all__ = ["RERANKERS", "Reranker", "create_reranker", "rerank_hits", "DEFAULT_RERANK_K"]
