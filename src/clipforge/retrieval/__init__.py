"""clipforge.retrieval: embed a collection into an index directory, search it, keep it up to date.

    from clipforge.retrieval import IndexSearcher, SearchQuery, build_index, update_index, delete_items
    build_index("files:photos", "ckpt/final", "idx")                # resumable; index.json + index.faiss
    searcher = IndexSearcher("idx")                                  # or with rerank="idx-big"
    searcher.search(SearchQuery('"a red bicycle" + 0.5*"beach"', k=10, filters=["path~*/2023/*"]))
    update_index("idx")                                              # new, changed and deleted files
    delete_items("idx", paths=["*/private/*"])                       # ids are never reused

An index directory (`IndexDir`) is an `EmbeddingStore` (float16 shards in clip-retrieval's layout, parquet
metadata, a versioned manifest) plus a faiss `VectorIndex` of a registered kind (`INDEX_KINDS`: flat, hnsw,
ivf_flat, ivf_pq, ivf_pqfs; `choose_index` picks one from size and a memory budget, `tune_recall` its search
parameter) and index.json. Queries are a small language (`parse_query`), filters another (`parse_filter`);
`Searcher` turns a query vector into filtered, de-duplicated, paginated `Hit`s, `IndexSearcher` does it over
an index directory with live refresh and an optional second stage (`RERANKERS`). Indexes too large for one
process are built in shards and merged (`train_template`, `build_shard`, `merge_shards`, `ShardedIndex`).
"""
from clipforge.retrieval.build import build_index, index_info, update_index
from clipforge.retrieval.delete import delete_items, select_items
from clipforge.retrieval.embed_dataset import embed_dataset
from clipforge.retrieval.faiss_build import build_faiss
from clipforge.retrieval.filters import Filter, filter_mask, parse_filter
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.index_choice import IndexSpec, choose_index, estimate_memory
from clipforge.retrieval.index_dir import IndexDir, read_info
from clipforge.retrieval.index_searcher import IndexSearcher, IndexView
from clipforge.retrieval.kinds import INDEX_KINDS, IndexKind
from clipforge.retrieval.query_language import Term, parse_query
from clipforge.retrieval.query_vector import compose_vector, embed_query
from clipforge.retrieval.recall import exact_knn, measure_recall, tune_recall
from clipforge.retrieval.rerank import RERANKERS, Reranker, create_reranker
from clipforge.retrieval.search_query import SearchQuery
from clipforge.retrieval.searcher import Hit, Searcher
from clipforge.retrieval.sharded import ShardedIndex, build_shard, merge_shards, open_index, train_template
from clipforge.retrieval.sheet import contact_sheet
from clipforge.retrieval.store import EmbeddingStore, StoreBusy

__all__ = ["build_index", "update_index", "index_info", "build_faiss", "embed_dataset", "delete_items",
           "select_items", "IndexDir", "read_info", "EmbeddingStore", "StoreBusy", "VectorIndex", "INDEX_KINDS",
           "IndexKind", "IndexSpec", "choose_index", "estimate_memory", "exact_knn", "measure_recall", "tune_recall",
           "IndexSearcher", "IndexView", "SearchQuery", "Searcher", "Hit", "Term", "parse_query", "embed_query",
           "compose_vector", "Filter", "parse_filter", "filter_mask", "RERANKERS", "Reranker", "create_reranker",
           "ShardedIndex", "train_template", "build_shard", "merge_shards", "open_index", "contact_sheet"]
