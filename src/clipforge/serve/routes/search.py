"""POST /search: ranked hits by text, image, terms and/or `like`, filtered, de-duplicated, paged.

A text query whose texts are all in the text-embedding cache, over an index small enough that a search takes
well under a millisecond (`INLINE_MAX_VECTORS`), is answered on the event loop itself; everything else (text
misses, images, reranking, big indexes) runs in the thread pool, with the server's timeout (503).
"""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from clipforge.errors import UsageError
from clipforge.retrieval.filters import parse_filter
from clipforge.retrieval.query_language import Term, parse_query
from clipforge.retrieval.search_query import SearchQuery
from clipforge.serve.guards import request_models
from clipforge.serve.public import HIDDEN_COLUMNS
from clipforge.serve.responses import error_responses
from clipforge.serve.state import ServeState

# A text query over at most this many vectors is searched on the event loop when its texts are cached: a
# flat scan of 8192 x 512 floats is ~4M multiply-adds (well under a millisecond), cheaper than the hop to a
# worker thread and back. Bigger indexes search in the thread pool (faiss releases the GIL there).
INLINE_MAX_VECTORS = 8192


def router(state: ServeState) -> APIRouter:
    r = APIRouter()
    searcher, limits, counters = state.searcher, state.limits, state.counters
    _, SearchIn = request_models(limits, rerank=searcher.reranker is not None, hidden=HIDDEN_COLUMNS)

    def cached_text_query(req) -> bool:
        """Whether `req` needs no model and no image decoding: text only, every text already cached."""
        if req.image is not None or any(t.image is not None for t in req.terms):
            return False
        if searcher.reranker is not None and req.rerank is not False:
            return False
        if len(searcher.index) > INLINE_MAX_VECTORS:
            return False
        texts = [t.text for t in req.terms]
        if req.text is not None and req.text.strip():
            texts += [t.value for t in parse_query(req.text, allow_paths=False)]  # text only without paths
        return searcher.texts.has_all(texts)

    async def search(req):
        if req.like is not None and not searcher.has_id(req.like):  # an unknown item, as for /items/{id}
            raise HTTPException(404, f"like: no item with id {req.like} in this index")
        for i, f in enumerate(req.filters):  # syntax, length and glob checked before the model runs
            try:
                parse_filter(f, max_chars=limits.max_filter_chars, hidden=HIDDEN_COLUMNS)
            except UsageError as e:
                raise HTTPException(422, f"filters[{i}]: {e}") from None

        def work():
            t0 = time.perf_counter()
            decode = state.images.request()
            image = decode(req.image, "image") if req.image else None
            terms = [Term("text", t.text, t.weight) if t.text is not None else
                     Term("image", decode(t.image, f"terms[{i}].image"),
                          t.weight) for i, t in enumerate(req.terms)]
            hits = searcher.search(SearchQuery(
                req.text, image, k=req.k, offset=req.offset, filters=req.filters, dedup=req.dedup,
                rerank=req.rerank, text_weight=req.text_weight, image_weight=req.image_weight, terms=terms,
                like=req.like, allow_paths=False, hidden_columns=HIDDEN_COLUMNS))
            return hits, (time.perf_counter() - t0) * 1e3

        if cached_text_query(req):
            hits, ms = work()
            counters.inline += 1
        else:
            hits, ms = await state.in_thread(work, "query")
        counters.searches += 1
        counters.latencies.append(ms)
        items = state.cache.public_items(hits)
        return JSONResponse({"k": req.k, "offset": req.offset, "took_ms": round(ms, 3),
                             "results": [h.to_dict(item) for h, item in zip(hits, items)]})

    search.__annotations__["req"] = SearchIn  # a class built for these limits (annotations are strings here)
    r.post("/search", dependencies=[Depends(state.auth)],
           responses=error_responses(404, 422, 503, key=state.keyed))(search)
    return r
