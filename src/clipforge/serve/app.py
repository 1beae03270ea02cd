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
(`HIDDEN_COLUMNS`, refused by the engine itself: 422), so a filter cannot probe the server's directories.
Every error is JSON: {"error": {"status": N, "message": "..."}}, and an unexpected failure is a 500 with no
details; each route documents its error statuses in /openapi.json (`responses.py`), a 405 names the allowed
methods in `Allow`, and the request schema's patterns read alike in every regex dialect (`patterns.py`), so
a request the schema accepts is one the server accepts. Deleting needs a server started with
an API key (403 otherwise): without one, anyone who can reach the port could empty the index. Item ids in
URLs are decimal digits within int64, a pattern in the schema (`1_0`, `+1`, `１` are 422, not items 10 and
1). A delete on a full disk is a 507, on a read-only file system a 503; nothing is deleted and reads go on.

Speed: the model never runs on the event loop. A text query whose texts are all in the text-embedding cache,
over an index small enough that a search takes well under a millisecond (`INLINE_MAX_VECTORS`), is answered
on the event loop itself; everything else (text misses, images, reranking, big indexes) runs in the thread
pool, where concurrent text misses share one forward (`TextEmbeddingCache`), with a timeout (503).
Responses are rendered straight to JSON (no per-field re-encoding).

Live updates: the app watches the index directory (every `reload_interval` s) and swaps in a new view of it
after `clipforge index update` / `index delete` (`SearchEngine.refresh`); requests in flight finish on the
view they started with. A DELETE refreshes its own worker before answering.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import os
import re
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import Depends, FastAPI, Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps
from starlette.exceptions import HTTPException

from clipforge.data.decode import BadSample, read_bytes, to_rgb
from clipforge.errors import ClipforgeError, DiskError, UsageError, disk_error
from clipforge.retrieval.delete import delete_items
from clipforge.retrieval.engine import SearchEngine
from clipforge.retrieval.query import Term, parse_filter, parse_query
from clipforge.models.display_name import display_name
from clipforge.retrieval.store import StoreBusy
from clipforge.serve.classify import ClassifyService
from clipforge.serve.guards import (INT64_MAX, PUBLIC_PATHS, PUBLIC_PREFIXES, ApiKeyAuth, BodyLimit,  # noqa: F401
                                    Limits, classify_model, decode_b64_image, error_response, request_models)
from clipforge.serve.hosts import HostAllowlist, allowed_host_names
from clipforge.serve.images import ImageDecoder
from clipforge.serve.patterns import decimal_at_most
from clipforge.serve.responses import error_responses

STATIC = Path(__file__).parent / "static"
HIDDEN_COLUMNS = ("path", "__url__")  # server paths: the file of an item, the shard it came from (never
# shown, never filterable over HTTP: SearchEngine(hidden_columns=...) refuses filters on them)
# A text query over at most this many vectors is searched on the event loop when its texts are cached: a
# flat scan of 8192 x 512 floats is ~4M multiply-adds (well under a millisecond), cheaper than the hop to a
# worker thread and back. Bigger indexes search in the thread pool (faiss releases the GIL there).
INLINE_MAX_VECTORS = 8192
RELOAD_INTERVAL_S = 0.25
PUBLIC_ITEM_CACHE = 65_536  # items whose public form is kept (a few hundred bytes each)
log = logging.getLogger("clipforge.serve")

_error = error_response  # kept for callers of the old private name
# An item id in a URL: decimal digits only (int parsing would also take "1_0", "+1", " 1", "１"), 0..2**63-1,
# so the schema itself refuses an id past int64 (a client reading it knows the 422 before sending)
ID_PATTERN = decimal_at_most(INT64_MAX)


async def item_id_param(item_id: str = PathParam(..., pattern=ID_PATTERN, max_length=19,
                                                 description="an item id: decimal digits, 0 to 2**63-1")) -> int:
    """The `item_id` of a route, parsed strictly (async: no thread-pool hop per request)."""
    if not (item_id.isascii() and item_id.isdigit()):  # the pattern again, whatever engine matched it ("1\n")
        raise HTTPException(422, "path.item_id: an item id is decimal digits only")
    value = int(item_id)
    if value > INT64_MAX:
        raise HTTPException(422, f"path.item_id: {item_id} is over the largest item id ({INT64_MAX})")
    return value


# What a request field's schema pattern asks for, in words (a 422 names this, not the regular expression)
PATTERN_MEANS = {"image": "not valid base64 (the alphabet in groups of four, `=` padding at the end only; a data: "
                          "URL prefix is accepted)",
                 "labels": "a label needs a character that is not whitespace",
                 "filters": "expected COLUMN OP VALUE, e.g. caption*=dog (OP: = != < <= > >= ~ *=)",
                 "item_id": f"an item id is decimal digits, 0 to {INT64_MAX}"}


def disk_status(e: DiskError) -> int:
    """507 Insufficient Storage for a full disk or quota, 503 for a read-only file system."""
    return 507 if e.full else 503


def disk_reason(e: DiskError, what: str = "nothing was changed") -> str:
    """What a client is told (no server path)."""
    if e.full:
        return f"the index's disk is full; {what}: try again when space has been freed"
    return f"the index is on a read-only file system; {what}: it needs to be writable for this"


def _thumbnail(path: str, size: int, max_pixels: int) -> bytes:
    data = read_bytes(path)  # a regular file under the size cap: a FIFO swapped in after indexing cannot block
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise OSError(f"{im.width}x{im.height} is over the pixel limit")
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale
            im = to_rgb(ImageOps.exif_transpose(im))
            im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


_ABS_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\](?:[^\s/\\:'\"]+[/\\])+")  # the folders of an absolute path


def _short_ref(ref) -> str:
    """A model or source reference without its folders: 'files:/srv/photos' -> 'files:photos'."""
    ref = str(ref)
    kind, sep, rest = ref.rpartition(":") if ":" in ref and not ref.startswith("/") else ("", "", ref)
    if rest.startswith(("/", "\\")) or (len(rest) > 2 and rest[1] == ":"):  # absolute: keep the last name
        rest = Path(rest.rstrip("/\\")).name or rest
    return f"{kind}{sep}{rest}"


def _public(hit_dict: dict) -> dict:
    """A result as the API shows it: no server paths, captions decoded, a thumbnail URL."""
    d = {k: v for k, v in hit_dict.items() if k not in HIDDEN_COLUMNS}
    if isinstance(d.get("meta_error"), str):  # indexes built before it was relative may name absolute paths
        d["meta_error"] = _ABS_PATH.sub("", d["meta_error"])
    if isinstance(d.get("captions"), str):
        try:
            d["captions"] = json.loads(d["captions"])
        except ValueError:
            pass
    for k, v in d.items():
        if isinstance(v, float) and not np.isfinite(v):
            d[k] = None
    d["thumb"] = f"/thumb/{d['id']}"
    return d


def _public_stats(stats: dict, hidden=HIDDEN_COLUMNS) -> dict:
    """Engine stats without server paths (model, source, a reranker's model or index); a model is named by
    `display_name` (its run's name, not `final`); `columns` lists only the filterable ones."""
    out = {**stats, "model": display_name(stats["model"]), "source": _short_ref(stats["source"]),
           "columns": [c for c in stats.get("columns", []) if c not in hidden]}
    if "rerank" in out:
        out["rerank"] = {k: (display_name(v) if k == "model" else _short_ref(v) if k == "index" else v)
                         for k, v in out["rerank"].items()}
    return out


# ---- the app ------------------------------------------------------------------------------------------

def create_app(index_dir, api_key: str | None = None, limits: Limits = Limits(), device=None,
               engine: SearchEngine | None = None, *, rerank=None, rerank_k: int | None = None,
               reload_interval: Optional[float] = RELOAD_INTERVAL_S, encode_engine: str | None = None,
               threads: int | None = None, allowed_hosts=None) -> FastAPI:
    """The service over `index_dir`. `engine`: a ready SearchEngine (else one is opened, with `rerank` /
    `rerank_k` as SearchEngine takes them, and `encode_engine` / `threads` for the runtime that embeds queries).
    `reload_interval`: seconds between checks of the index directory for changes while the app runs (None:
    never; the app's lifespan starts and stops the watcher). `allowed_hosts`: the Host names it answers to
    (hosts.HostAllowlist; None: any)."""
    if engine is None:
        engine = SearchEngine(index_dir, device=device, rerank=rerank, encode_engine=encode_engine,
                              threads=threads, hidden_columns=HIDDEN_COLUMNS,
                              **({"rerank_k": rerank_k} if rerank_k is not None else {}))
    elif rerank is not None or rerank_k is not None or encode_engine is not None:
        raise UsageError("give `rerank` / `rerank_k` / `encode_engine` to the SearchEngine passed as `engine`")
    engine.encoder  # load now, so the first request is not slow  # noqa: B018
    classifier = ClassifyService(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        watcher = engine.watch(reload_interval) if reload_interval else None
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
    images = ImageDecoder(limits)  # decodes at once, and each request's images within one budget
    stats = {"started": time.time(), "searches": 0, "inline": 0, "classifications": 0, "deletes": 0,
             "errors": 0}
    latencies: collections.deque = collections.deque(maxlen=2000)
    # an item's public form (no paths, captions decoded) is the same in every result: kept per item id, and
    # dropped whenever the engine swaps in a new view of the index (an item may have changed)
    public_items: dict[int, dict] = {}
    public_state = {"reloads": engine.reloads}

    def public_hit(hit) -> dict:
        if public_state["reloads"] != engine.reloads:
            public_items.clear()
            public_state["reloads"] = engine.reloads
        base = public_items.get(hit.id)
        if base is None:
            base = _public({"id": hit.id, **hit.metadata})
            if len(public_items) >= PUBLIC_ITEM_CACHE:
                public_items.clear()
            public_items[hit.id] = base
        out = {**base, "rank": hit.rank, "score": hit.score, "stage": hit.stage}
        if hit.stage1_score is not None:
            out["stage1_score"] = hit.stage1_score
        return out
    thumbs: collections.OrderedDict[int, bytes] = collections.OrderedDict()
    thumbs_state = {"reloads": engine.reloads}
    thumbs_lock = threading.Lock()

    # ApiKeyAuth has checked the key before any route runs; this dependency only declares the scheme, so
    # /docs offers "Authorize" and clients see that X-API-Key is expected.
    # (an async no-op without a key: FastAPI runs a plain function dependency in the thread pool, one hop
    # per request)
    async def no_auth():
        return None

    auth = APIKeyHeader(name="X-API-Key", auto_error=False) if api_key is not None else no_auth
    keyed = api_key is not None  # every route but the public ones may answer 401

    def allowed_methods(path: str) -> str:
        """The methods the routes at `path` take (all of them: the router's own 405 names one route's)."""
        methods = {m for r in app.router.routes if getattr(r, "methods", None) and r.path_regex.match(path)
                   for m in r.methods}
        return ", ".join(sorted(methods))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        if exc.status_code >= 400:
            stats["errors"] += 1
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Retry-After
        if exc.status_code == 405:
            response.headers["Allow"] = allowed_methods(request.url.path)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        stats["errors"] += 1
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            msg = "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", "invalid")
            msg = msg.removeprefix("Value error, ")  # a model's own rule (guards.request_models) says it all
            if e.get("type") == "string_pattern_mismatch":  # say what the pattern means, not the pattern
                field = next((x for x in reversed(e.get("loc", ())) if isinstance(x, str)), "")
                msg = PATTERN_MEANS.get(field, msg)
            if e.get("type") in ("less_than_equal", "too_long", "string_too_long"):
                msg += " (this server's limit)"
            parts.append(f"{loc or 'body'}: {msg}")
        return error_response(422, "; ".join(parts))

    @app.exception_handler(ClipforgeError)
    async def _clipforge(request, exc: ClipforgeError):
        stats["errors"] += 1
        if isinstance(exc, DiskError):  # its message names server paths
            return error_response(disk_status(exc), disk_reason(exc))
        return error_response(422 if isinstance(exc, UsageError) else 400, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # a bug: logged here, no details to the client
        stats["errors"] += 1
        disk = disk_error(exc)
        if disk is not None:  # not a bug: the disk is full or read-only
            log.warning("%s %s: %s", request.method, request.url.path, disk)
            return error_response(disk_status(disk), disk_reason(disk))
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error")

    async def _in_thread(fn, what: str):
        try:
            return await asyncio.wait_for(run_in_threadpool(fn), limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"the {what} took longer than {limits.timeout_s} s; try again") from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", responses=error_responses())
    async def healthz():
        return {"status": "ok", "count": len(engine.index)}

    @app.get("/stats", dependencies=[Depends(auth)], responses=error_responses(key=keyed))
    async def get_stats():
        lat = np.array(latencies) if latencies else np.zeros(1)
        return {**_public_stats(engine.stats(), HIDDEN_COLUMNS), "uptime_s": round(time.time() - stats["started"], 1),
                "searches": stats["searches"], "searches_inline": stats["inline"],
                "classifications": stats["classifications"], "deletes": stats["deletes"],
                "errors": stats["errors"], "thumbs_cached": len(thumbs),
                "search_ms_p50": round(float(np.percentile(lat, 50)), 3),
                "search_ms_p99": round(float(np.percentile(lat, 99)), 3), "limits": asdict(limits),
                "template_sets": classifier.template_sets()}

    _, SearchIn = request_models(limits, rerank=engine.reranker is not None, hidden=HIDDEN_COLUMNS)

    def _cached_text_query(req) -> bool:
        """Whether `req` needs no model and no image decoding: text only, every text already cached."""
        if req.image is not None or any(t.image is not None for t in req.terms):
            return False
        if engine.reranker is not None and req.rerank is not False:
            return False
        if len(engine.index) > INLINE_MAX_VECTORS:
            return False
        texts = [t.text for t in req.terms]
        if req.text is not None and req.text.strip():
            texts += [t.value for t in parse_query(req.text, allow_paths=False)]  # text only without paths
        return engine.texts.has_all(texts)

    async def search(req):
        if req.like is not None and not engine.has_id(req.like):  # an unknown item, as for /items/{id}
            raise HTTPException(404, f"like: no item with id {req.like} in this index")
        for i, f in enumerate(req.filters):  # syntax, length and glob checked before the model runs
            try:
                parse_filter(f, max_chars=limits.max_filter_chars, hidden=HIDDEN_COLUMNS)
            except UsageError as e:
                raise HTTPException(422, f"filters[{i}]: {e}") from None

        def work():
            t0 = time.perf_counter()
            decode = images.request()
            image = decode(req.image, "image") if req.image else None
            terms = [Term("text", t.text, t.weight) if t.text is not None else
                     Term("image", decode(t.image, f"terms[{i}].image"),
                          t.weight) for i, t in enumerate(req.terms)]
            hits = engine.search(req.text, image, k=req.k, offset=req.offset, filters=req.filters,
                                 dedup=req.dedup, text_weight=req.text_weight, image_weight=req.image_weight,
                                 terms=terms, like=req.like, allow_paths=False, rerank=req.rerank,
                                 hidden_columns=HIDDEN_COLUMNS)
            return hits, (time.perf_counter() - t0) * 1e3

        if _cached_text_query(req):
            hits, ms = work()
            stats["inline"] += 1
        else:
            hits, ms = await _in_thread(work, "query")
        stats["searches"] += 1
        latencies.append(ms)
        return JSONResponse({"k": req.k, "offset": req.offset, "took_ms": round(ms, 3),
                             "results": [public_hit(h) for h in hits]})

    search.__annotations__["req"] = SearchIn  # a class built for these limits (annotations are strings here)
    app.post("/search", dependencies=[Depends(auth)], responses=error_responses(404, 422, 503, key=keyed))(search)

    ClassifyIn = classify_model(limits, classifier.template_sets())

    async def classify(req):
        def work():
            image = images.request()(req.image, "image")
            return classifier.classify(image, req.labels, req.templates)

        res = await _in_thread(work, "classification")
        stats["classifications"] += 1
        return JSONResponse(res)

    classify.__annotations__["req"] = ClassifyIn
    app.post("/classify", dependencies=[Depends(auth)], responses=error_responses(422, 503, key=keyed))(classify)

    @app.get("/items/{item_id}", dependencies=[Depends(auth)], responses=error_responses(404, 422, key=keyed))
    async def item(item_id: int = Depends(item_id_param)):
        found = engine.item(item_id)
        if found is None:
            raise HTTPException(404, f"no item with id {item_id}")
        return JSONResponse(_public(found))

    @app.delete("/items/{item_id}", dependencies=[Depends(auth)],
                responses=error_responses(403, 404, 409, 422, 503, 507, key=keyed))
    async def delete_item(item_id: int = Depends(item_id_param)):
        if api_key is None:
            raise HTTPException(403, "deleting needs a server started with an API key")
        if engine.item(item_id) is None:
            raise HTTPException(404, f"no item with id {item_id}")

        def work():
            try:
                res = delete_items(engine.root, ids=[item_id])
            except StoreBusy:
                raise HTTPException(409, "the index is being changed by another process (an index update or "
                                         "delete); try again when it is done") from None
            except DiskError as e:  # nothing was deleted; reads go on from the unchanged index
                log.warning("DELETE /items/%d: %s", item_id, e)
                raise HTTPException(disk_status(e), disk_reason(e, "nothing was deleted")) from None
            engine.refresh()  # this worker answers from the new view from now on
            return res

        res = await _in_thread(work, "delete")
        if not res["deleted"]:  # deleted meanwhile by another request or process
            raise HTTPException(404, f"no item with id {item_id}")
        stats["deletes"] += 1
        return JSONResponse({"deleted": [item_id], "count": res["count"]})

    @app.get("/thumb/{item_id}", dependencies=[Depends(auth)],
             responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404, 422, key=keyed)})
    async def thumb(item_id: int = Depends(item_id_param)):
        with thumbs_lock:
            if thumbs_state["reloads"] != engine.reloads:  # the index changed: a file may have changed too
                thumbs.clear()
                thumbs_state["reloads"] = engine.reloads
            data = thumbs.get(item_id)
            if data is not None:
                thumbs.move_to_end(item_id)
        if data is None:
            path = engine.path_of(item_id)  # only files recorded in the index
            if path is None:
                raise HTTPException(404, f"no indexed file for id {item_id}")
            try:
                data = await run_in_threadpool(_thumbnail, path, limits.thumb_size, limits.max_image_pixels)
            except Exception as e:  # noqa: BLE001 - unreadable, vanished or oversized: not a server error
                why = e.reason if isinstance(e, BadSample) else type(e).__name__
                raise HTTPException(404, f"the file of id {item_id} cannot be read now ({why})") from None
            with thumbs_lock:
                thumbs[item_id] = data
                while len(thumbs) > limits.thumb_cache:
                    thumbs.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    app.state.engine = engine
    app.state.classifier = classifier
    app.state.images = images
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
