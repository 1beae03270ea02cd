"""The HTTP service over one index directory: `create_app(index_dir)` returns a FastAPI app.

    POST /search        {"text": "...", "image": "<base64>", "terms": [...], "like": id, "k": 20, "offset": 0,
                         "filters": ["caption*=dog"], "dedup": 0.95, "rerank": true}  -> ranked results
    POST /classify      {"image": "<base64>", "labels": ["cat", "dog"], "templates": "photo"} -> probabilities
    GET  /items/{id}    an item's metadata          DELETE /items/{id}  remove it (needs an API key)
    GET  /thumb/{id}    a JPEG thumbnail of an indexed file
    GET  /healthz       liveness                    GET /stats       counts, model, index, latency, caches
    GET  /              the search page (static/)   GET /docs, /openapi.json

Defences (docs/security.md has the whole list; `guards.py` holds them): with an API key, every route but the
page, its static files, /healthz and the API docs answers 401 before the request body is read or validated;
bodies over `max_body_bytes` are refused before they are read (413); images are checked against a pixel
limit before decoding (decompression bombs, 413); k, offset, ids (int64), query and term text length, term,
filter and label counts, and each filter's and label's length are capped, and filter globs must compile,
all before the model runs (422); JSON types are strict and unknown fields are refused (422); query strings
never name files (no `img:` terms from the network), template sets are names, never paths, and /thumb takes
an integer id that must map to a regular file recorded in the index, so nothing from a request ever becomes
a filesystem path. Responses never show server paths, and filters cannot name the columns that hold them
(`HIDDEN_COLUMNS`, refused by the searcher itself: 422), so a filter cannot probe the server's directories.
Every error is JSON: {"error": {"status": N, "message": "..."}}, and an unexpected failure is a 500 with no
details; each route documents its error statuses in /openapi.json (`responses.py`), a 405 names the allowed
methods in `Allow`, and the request schema's patterns read alike in every regex dialect (`patterns.py`), so
a request the schema accepts is one the server accepts. Deleting needs a server started with
an API key (403 otherwise): without one, anyone who can reach the port could empty the index. Item ids in
URLs are decimal digits within int64, a pattern in the schema (`1_0`, `+1`, `１` are 422, not items 10 and
1). A delete on a full disk is a 507, on a read-only file system a 503; nothing is deleted and reads go on.

Speed: the model never runs on the event loop. A text query whose texts are all in the text-embedding cache,
over an index small enough that a search takes well under a millisecond (`routes/search.py`), is answered
on the event loop itself; everything else (text misses, images, reranking, big indexes) runs in the thread
pool, where concurrent text misses share one forward (`TextEmbeddingCache`), with a timeout (503).
Responses are rendered straight to JSON (no per-field re-encoding); a hit's one JSON form is `Hit.to_dict`.

Live updates: the app watches the index directory (every `reload_interval` s) and swaps in a new view of it
after `clipforge index update` / `index delete` (`IndexSearcher.refresh`); requests in flight finish on the
view they started with. A DELETE refreshes its own worker before answering. What the service derives from
the index (items' public forms, thumbnails) lives in one reload-scoped cache (`state.ViewCache`).

Layout: this module builds the app (searcher, middleware, error handlers) and includes one router per resource
from `routes/` (search, classify, items, thumbs, info: /healthz + /stats, page: / + /static); `state.py`
holds what the routers share (`ServeState`: searcher, limits, services, counters, the cache), `public.py` what
the API shows of an index, `error_handlers.py` how failures become the one error shape.

Adding an endpoint: one file `routes/NAME.py` defining `router(state: ServeState) -> APIRouter` (its routes
take `dependencies=[Depends(state.auth)]` unless public, and `responses=error_responses(..., key=state.keyed)`
for the statuses they answer; heavy work goes through `state.in_thread`), plus one line in `create_app`:
`app.include_router(NAME.router(state))`. A public route also goes in `guards.PUBLIC_PATHS`.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Optional

from fastapi import FastAPI

from clipforge.errors import UsageError
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.serve.error_handlers import install_error_handlers
from clipforge.serve.guards import PUBLIC_PATHS, PUBLIC_PREFIXES, ApiKeyAuth, BodyLimit, Limits  # noqa: F401
from clipforge.serve.hosts import HostAllowlist, allowed_host_names
from clipforge.serve.public import HIDDEN_COLUMNS
from clipforge.serve.routes import caption, classify, explain, info, items, page, search, thumbs
from clipforge.serve.state import ServeState

RELOAD_INTERVAL_S = 0.25


def create_app(index_dir, api_key: str | None = None, limits: Limits = Limits(), device=None,
               searcher: IndexSearcher | None = None, *, rerank=None, rerank_k: int | None = None,
               reload_interval: Optional[float] = RELOAD_INTERVAL_S, encode_engine: str | None = None,
               threads: int | None = None, allowed_hosts=None, token_merge=None,
               merge_method: str | None = None) -> FastAPI:
    """The service over `index_dir`. `searcher`: a ready IndexSearcher (else one is opened, with `rerank` /
    `rerank_k` as IndexSearcher takes them, `encode_engine` / `threads` for the runtime that embeds queries, and
    `token_merge` / `merge_method` for the token merging image queries and /classify embed with: default the
    index's own, `models.token_merge`).
    `reload_interval`: seconds between checks of the index directory for changes while the app runs (None:
    never; the app's lifespan starts and stops the watcher). `allowed_hosts`: the Host names it answers to
    (hosts.HostAllowlist; None: any)."""
    if searcher is None:
        searcher = IndexSearcher(index_dir, device=device, rerank=rerank, encode_engine=encode_engine,
                                 threads=threads, hidden_columns=HIDDEN_COLUMNS, token_merge=token_merge,
                                 merge_method=merge_method, **({"rerank_k": rerank_k} if rerank_k is not None else {}))
    elif rerank is not None or rerank_k is not None or encode_engine is not None or token_merge is not None \
            or merge_method is not None:
        raise UsageError("give `rerank` / `rerank_k` / `encode_engine` / `token_merge` / `merge_method` to the "
                         "IndexSearcher passed as `searcher`")
    searcher.encoder  # load now, so the first request is not slow  # noqa: B018
    state = ServeState(searcher, limits, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        watcher = searcher.watch(reload_interval) if reload_interval else None
        yield
        if watcher is not None:
            watcher.stop()

    # The docs are public: they describe the API, never the data (no source path, no counts).
    app = FastAPI(title="clipforge search", version="1", lifespan=lifespan,
                  description="Search an image collection by text, image, or both, and classify images "
                              "zero-shot (clipforge).")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, max_header_bytes=limits.max_header_bytes)
    if api_key is not None:
        app.add_middleware(ApiKeyAuth, api_key=api_key)  # added last = outermost: runs before everything
    if allowed_hosts is not None:  # outermost of all: a foreign Host (DNS rebinding) is refused first
        app.add_middleware(HostAllowlist, allowed_hosts=allowed_host_names(allowed_hosts))
    install_error_handlers(app, state.counters)

    app.include_router(page.router(state))
    app.include_router(info.router(state))
    app.include_router(search.router(state))
    app.include_router(classify.router(state))
    app.include_router(items.router(state))
    app.include_router(thumbs.router(state))
    app.include_router(caption.router(state))
    app.include_router(explain.router(state))

    app.state.serve = state
    app.state.searcher, app.state.classifier, app.state.images = searcher, state.classifier, state.images
    return app


SERVE_ENV = "CLIPFORGE_SERVE_CONFIG"  # JSON: create_app's arguments, for worker processes (see app_from_env)


def app_from_env() -> FastAPI:
    """The app described by $CLIPFORGE_SERVE_CONFIG (create_app's arguments as JSON; `limits` a dict) and
    $CLIPFORGE_API_KEY: what each worker process of a multi-process server builds (uvicorn's factory)."""
    raw = os.environ.get(SERVE_ENV)
    if not raw:
        raise UsageError(f"${SERVE_ENV} is not set: it holds the server's settings as JSON")
    options = json.loads(raw)
    limits = Limits(**options.pop("limits", {}))
    return create_app(api_key=os.environ.get("CLIPFORGE_API_KEY"), limits=limits, **options)
