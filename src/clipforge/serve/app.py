"""The HTTP service over one index directory: `create_app(index_dir)` returns a FastAPI app.

    POST /search      {"text": "...", "image": "<base64>", "terms": [...], "like": id, "k": 20, "offset": 0,
                       "filters": ["caption*=dog"], "dedup": 0.95}  -> ranked results
    GET  /items/{id}  an item's metadata          GET /thumb/{id}  a JPEG thumbnail of an indexed file
    GET  /healthz     liveness                    GET /stats       counts, model, index, latency
    GET  /            the search page (static/)   GET /docs, /openapi.json

Defences (docs/security.md has the whole list): with an API key, every route but the page, its static files,
/healthz and the API docs answers 401 before the request body is read or validated; bodies over
`max_body_bytes` are refused before they are read (413); images are checked against a pixel limit before
decoding (decompression bombs, 413); k, offset, ids (int64), query and term text length, term and filter
counts, and each filter's length are capped, and filter globs must compile, all before the model runs (422);
JSON types are strict (`true` is not a number) and unknown fields are refused (422); query strings never name
files (no `img:` terms from the network), and /thumb takes an integer id that must map to a regular file
recorded in the index, so nothing from a request ever becomes a filesystem path. Responses never show server
paths: not in the API docs, not in items (`path`, a shard's `__url__` are left out; `meta_error` names files
relative to the collection). Every error is JSON: {"error": {"status": N, "message": "..."}}, and an
unexpected failure is a 500 with no details. Model inference runs in the threadpool under the engine's lock,
with a timeout (503).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hmac
import io
import json
import logging
import re
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
from fastapi import Depends, FastAPI, Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException

from clipforge.data.decode import BadSample, DecodeOptions, decode_image, read_bytes, to_rgb
from clipforge.errors import ClipforgeError, UsageError
from clipforge.retrieval.engine import SearchEngine
from clipforge.retrieval.query import Term, parse_filter

STATIC = Path(__file__).parent / "static"
INT64_MAX = 2**63 - 1
# Reachable without the API key: the page (it asks for the key), its files, liveness, and the API's own docs
# (which describe the API, never the data).
PUBLIC_PATHS = ("/", "/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")
PUBLIC_PREFIXES = ("/static/",)
FILTER_PATTERN = r"^\s*[A-Za-z_][\w.]*\s*(!=|<=|>=|\*=|=|<|>|~)\s*\S"  # COLUMN OP VALUE (query.parse_filter)
HIDDEN_COLUMNS = ("path", "__url__")  # server paths: the file of an item, the shard it came from
log = logging.getLogger("clipforge.serve")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 2**20
    max_header_bytes: int = 16 * 2**10   # request line + headers (h11 only checks heads that arrive in parts)
    max_image_pixels: int = 40_000_000   # a query image over this is refused before decoding
    max_k: int = 200
    max_offset: int = 10_000
    max_query_chars: int = 2_000         # the query string and each term's text
    max_terms: int = 16
    max_filters: int = 16
    max_filter_chars: int = 1_000        # each filter (matching time grows with its length)
    timeout_s: float = 30.0
    thumb_size: int = 256
    thumb_cache: int = 4096              # thumbnails kept in memory (≈ 10 KB each)


# ---- request bodies -----------------------------------------------------------------------------------

def _json_int(value):
    """JSON Schema's integer: 3 or 3.0, never `true` or "3" (pydantic's lax mode takes those as numbers)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("Input should be a valid integer")
    return value


def request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
    """(TermIn, SearchIn) with this server's limits in their schema, so /openapi.json documents them and a
    request beyond one is refused (422) before any work. Types are JSON's: `true` is not 1, "5" not 5."""
    Query = Annotated[str, StringConstraints(max_length=limits.max_query_chars)]
    FilterStr = Annotated[str, StringConstraints(max_length=limits.max_filter_chars, pattern=FILTER_PATTERN)]

    class TermIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: Optional[Query] = Field(None, description="a text term (plain text, never a file path)")
        image: Optional[str] = Field(None, description="a base64 image (a data: URL prefix is accepted)")
        weight: float = Field(1.0, ge=-100, le=100, strict=True, description="negative weights push results away")

    class SearchIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: Optional[Query] = Field(None, description='query language: plain text or \'"a" + 0.5*"b" - "c"\'')
        image: Optional[str] = Field(None, description="base64 query image, composed with text when both given")
        text_weight: float = Field(1.0, ge=-100, le=100, strict=True)
        image_weight: float = Field(1.0, ge=-100, le=100, strict=True)
        terms: list[TermIn] = Field(default_factory=list, max_length=limits.max_terms,
                                    description="extra weighted text / image terms")
        like: Optional[Annotated[int, Field(ge=0, le=INT64_MAX), BeforeValidator(_json_int)]] = Field(
            None, description="an item id: more like this")
        k: Annotated[int, Field(ge=1, le=limits.max_k), BeforeValidator(_json_int)] = Field(
            20, description="results per page")
        offset: Annotated[int, Field(ge=0, le=limits.max_offset), BeforeValidator(_json_int)] = 0
        filters: list[FilterStr] = Field(default_factory=list, max_length=limits.max_filters,
                                         description="e.g. caption*=dog, path~*/beach/*, size>=1000")
        dedup: Optional[Annotated[float, Field(ge=0.0, le=1.0, strict=True)]] = Field(
            None, description="collapse hits with cosine above this")

    return TermIn, SearchIn


# ---- helpers ------------------------------------------------------------------------------------------

def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


class ApiKeyAuth:
    """ASGI middleware, outermost: without the right X-API-Key header, every non-public route answers 401
    before anything else runs — before the body is read, parsed or validated, and whatever the route."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope.get("headers", []) if k == b"x-api-key"), b"")
        if not hmac.compare_digest(given, self.key):
            return await _error(401, "missing or wrong API key (send it in the X-API-Key header)")(
                scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: refuse request heads over max_header_bytes (431) and bodies over max_bytes (413), by
    Content-Length or while streaming."""

    def __init__(self, app, max_bytes: int, max_header_bytes: int = 16 * 2**10):
        self.app, self.max_bytes, self.max_header_bytes = app, max_bytes, max_header_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + \
            sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
        if head > self.max_header_bytes:
            return await _error(431, f"request headers of {head} bytes are over the {self.max_header_bytes} "
                                     "byte limit")(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    return await _error(400, "invalid Content-Length header")(scope, receive, send)
                if n > self.max_bytes:
                    return await _error(413, f"request body of {n} bytes is over the {self.max_bytes} byte "
                                             "limit")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:  # chunked uploads have no Content-Length
                    raise HTTPException(413, f"request body is over the {self.max_bytes} byte limit")
            return msg

        await self.app(scope, limited, send)


def _decode_b64_image(data: str, max_pixels: int, what: str):
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{what}: not valid base64") from None
    try:
        return decode_image(raw, DecodeOptions(max_pixels=max_pixels))
    except BadSample as e:
        if e.reason == "too_large":
            raise HTTPException(413, f"{what}: {e.detail} (limit {max_pixels} pixels)") from None
        raise HTTPException(400, f"{what}: not a readable image ({e.reason})") from None


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


def _short_ref(ref: str) -> str:
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


# ---- the app ------------------------------------------------------------------------------------------

def create_app(index_dir, api_key: str | None = None, limits: Limits = Limits(), device=None,
               engine: SearchEngine | None = None) -> FastAPI:
    engine = engine or SearchEngine(index_dir, device=device)
    engine.encoder  # load now, so the first request is not slow  # noqa: B018
    # The docs are public: they describe the API, never the data (no source path, no counts).
    app = FastAPI(title="clipforge search", version="1",
                  description="Search an image collection by text, image, or both (clipforge).")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, max_header_bytes=limits.max_header_bytes)
    if api_key is not None:
        app.add_middleware(ApiKeyAuth, api_key=api_key)  # added last = outermost: runs before everything
    stats = {"started": time.time(), "searches": 0, "errors": 0}
    latencies: collections.deque = collections.deque(maxlen=2000)
    thumbs: collections.OrderedDict[int, bytes] = collections.OrderedDict()
    thumbs_lock = threading.Lock()

    # ApiKeyAuth has checked the key before any route runs; this dependency only declares the scheme, so
    # /docs offers "Authorize" and clients see that X-API-Key is expected.
    auth = APIKeyHeader(name="X-API-Key", auto_error=False) if api_key is not None else (lambda: None)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        if exc.status_code >= 400:
            stats["errors"] += 1
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        stats["errors"] += 1
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            msg = "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", "invalid")
            if e.get("type") in ("less_than_equal", "too_long", "string_too_long"):
                msg += " (this server's limit)"
            parts.append(f"{loc or 'body'}: {msg}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(ClipforgeError)
    async def _clipforge(request, exc: ClipforgeError):
        stats["errors"] += 1
        return _error(422 if isinstance(exc, UsageError) else 400, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # a bug: logged here, no details to the client
        stats["errors"] += 1
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "count": len(engine.index)}

    @app.get("/stats", dependencies=[Depends(auth)])
    async def get_stats():
        lat = np.array(latencies) if latencies else np.zeros(1)
        base = engine.stats()
        base["model"], base["source"] = _short_ref(base["model"]), _short_ref(base["source"])  # no server paths
        return {**base, "uptime_s": round(time.time() - stats["started"], 1),
                "searches": stats["searches"], "errors": stats["errors"], "thumbs_cached": len(thumbs),
                "search_ms_p50": round(float(np.percentile(lat, 50)), 3),
                "search_ms_p99": round(float(np.percentile(lat, 99)), 3), "limits": asdict(limits)}

    _, SearchIn = request_models(limits)

    async def search(req):
        for t in req.terms:
            if (t.text is None) == (t.image is None):
                raise HTTPException(422, "each term needs exactly one of text or image")
        for i, f in enumerate(req.filters):  # syntax, length and glob checked before the model runs
            try:
                parse_filter(f, max_chars=limits.max_filter_chars)
            except UsageError as e:
                raise HTTPException(422, f"filters[{i}]: {e}") from None

        def work():
            t0 = time.perf_counter()
            image = _decode_b64_image(req.image, limits.max_image_pixels, "image") if req.image else None
            terms = [Term("text", t.text, t.weight) if t.text is not None else
                     Term("image", _decode_b64_image(t.image, limits.max_image_pixels, f"terms[{i}].image"),
                          t.weight) for i, t in enumerate(req.terms)]
            hits = engine.search(req.text, image, k=req.k, offset=req.offset, filters=req.filters,
                                 dedup=req.dedup, text_weight=req.text_weight, image_weight=req.image_weight,
                                 terms=terms, like=req.like, allow_paths=False)
            return hits, (time.perf_counter() - t0) * 1e3

        try:
            hits, ms = await asyncio.wait_for(run_in_threadpool(work), limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"the query took longer than {limits.timeout_s} s; try again") from None
        stats["searches"] += 1
        latencies.append(ms)
        return {"k": req.k, "offset": req.offset, "took_ms": round(ms, 3),
                "results": [_public(h.to_dict()) for h in hits]}

    search.__annotations__["req"] = SearchIn  # a class built for these limits (annotations are strings here)
    app.post("/search", dependencies=[Depends(auth)])(search)

    @app.get("/items/{item_id}", dependencies=[Depends(auth)])
    async def item(item_id: int = PathParam(..., ge=0, le=INT64_MAX)):
        found = engine.item(item_id)
        if found is None:
            raise HTTPException(404, f"no item with id {item_id}")
        return _public(found)

    @app.get("/thumb/{item_id}", dependencies=[Depends(auth)],
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumb(item_id: int = PathParam(..., ge=0, le=INT64_MAX)):
        with thumbs_lock:
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
    return app
