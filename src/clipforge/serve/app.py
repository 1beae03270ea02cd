"""The HTTP service over one index directory: `create_app(index_dir)` returns a FastAPI app.

    POST /search      {"text": "...", "image": "<base64>", "terms": [...], "like": id, "k": 20, "offset": 0,
                       "filters": ["caption*=dog"], "dedup": 0.95}  -> ranked results
    GET  /items/{id}  an item's metadata          GET /thumb/{id}  a JPEG thumbnail of an indexed file
    GET  /healthz     liveness                    GET /stats       counts, model, index, latency
    GET  /            the search page (static/)   GET /docs, /openapi.json

Defences: bodies over `max_body_bytes` are refused before they are read (413); images are checked against
a pixel limit before decoding (decompression bombs, 413); k, offset, query length, term and filter counts are
capped (422); unknown JSON fields are refused (422); query strings never name files (no `img:` terms from the
network), and /thumb takes an integer id that must map to a file recorded in the index, so nothing from a
request ever becomes a filesystem path. Every error is JSON: {"error": {"status": N, "message": "..."}}.
Model inference runs in the threadpool under the engine's lock, with a timeout (503).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hmac
import io
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional
import json

import numpy as np
from fastapi import Depends, FastAPI, Path as PathParam, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from PIL import Image, ImageOps

from clipforge.data.decode import BadSample, DecodeOptions, decode_image, to_rgb
from clipforge.errors import ClipforgeError, UsageError
from clipforge.retrieval.engine import SearchEngine
from clipforge.retrieval.query import Term

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 2**20
    max_image_pixels: int = 40_000_000   # a query image over this is refused before decoding
    max_k: int = 200
    max_offset: int = 10_000
    max_query_chars: int = 2_000
    max_terms: int = 16
    max_filters: int = 16
    timeout_s: float = 30.0
    thumb_size: int = 256
    thumb_cache: int = 4096              # thumbnails kept in memory (≈ 10 KB each)


# ---- request bodies -----------------------------------------------------------------------------------

class TermIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Optional[str] = Field(None, description="a text term (plain text, never a file path)")
    image: Optional[str] = Field(None, description="a base64 image (a data: URL prefix is accepted)")
    weight: float = Field(1.0, ge=-100, le=100, description="negative weights push results away")


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Optional[str] = Field(None, description='query language: plain text or \'"a" + 0.5*"b" - "c"\'')
    image: Optional[str] = Field(None, description="base64 query image, composed with text when both given")
    text_weight: float = Field(1.0, ge=-100, le=100)
    image_weight: float = Field(1.0, ge=-100, le=100)
    terms: list[TermIn] = Field(default_factory=list, description="extra weighted text / image terms")
    like: Optional[int] = Field(None, ge=0, description="an item id: more like this")
    k: int = Field(20, ge=1, description="results per page (capped by the server)")
    offset: int = Field(0, ge=0)
    filters: list[str] = Field(default_factory=list, description="e.g. caption*=dog, path~*/beach/*, size>=1000")
    dedup: Optional[float] = Field(None, ge=0.0, le=1.0, description="collapse hits with cosine above this")


# ---- helpers ------------------------------------------------------------------------------------------

def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


class BodyLimit:
    """ASGI middleware: refuse request bodies over max_bytes, by Content-Length or while streaming."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise OSError(f"{im.width}x{im.height} is over the pixel limit")
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale
            im = to_rgb(ImageOps.exif_transpose(im))
            im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _public(hit_dict: dict) -> dict:
    """A result as the API shows it: no absolute server paths, captions decoded, a thumbnail URL."""
    d = {k: v for k, v in hit_dict.items() if k != "path"}
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
               engine: SearchEngine | None = None, encode_engine: str | None = None,
               threads: int | None = None) -> FastAPI:
    engine = engine or SearchEngine(index_dir, device=device, encode_engine=encode_engine, threads=threads)
    engine.encoder  # load now, so the first request is not slow  # noqa: B018
    app = FastAPI(title="clipforge search", version="1",
                  description=f"Search {engine.stats()['count']} items of {engine.info['source']}.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    stats = {"started": time.time(), "searches": 0, "errors": 0}
    latencies: collections.deque = collections.deque(maxlen=2000)
    thumbs: collections.OrderedDict[int, bytes] = collections.OrderedDict()
    thumbs_lock = threading.Lock()

    async def auth(request: Request):
        if api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (send it in the X-API-Key header)")

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
            parts.append(f"{loc or 'body'}: {msg}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(ClipforgeError)
    async def _clipforge(request, exc: ClipforgeError):
        stats["errors"] += 1
        return _error(422 if isinstance(exc, UsageError) else 400, str(exc))

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
        return {**engine.stats(), "uptime_s": round(time.time() - stats["started"], 1),
                "searches": stats["searches"], "errors": stats["errors"], "thumbs_cached": len(thumbs),
                "search_ms_p50": round(float(np.percentile(lat, 50)), 3),
                "search_ms_p99": round(float(np.percentile(lat, 99)), 3), "limits": asdict(limits)}

    @app.post("/search", dependencies=[Depends(auth)])
    async def search(req: SearchIn):
        if req.k > limits.max_k:
            raise HTTPException(422, f"k={req.k} is over this server's limit of {limits.max_k}")
        if req.offset > limits.max_offset:
            raise HTTPException(422, f"offset={req.offset} is over this server's limit of {limits.max_offset}")
        if req.text is not None and len(req.text) > limits.max_query_chars:
            raise HTTPException(422, f"text is over {limits.max_query_chars} characters")
        if len(req.terms) > limits.max_terms or len(req.filters) > limits.max_filters:
            raise HTTPException(422, f"at most {limits.max_terms} terms and {limits.max_filters} filters")
        for t in req.terms:
            if (t.text is None) == (t.image is None):
                raise HTTPException(422, "each term needs exactly one of text or image")

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

    @app.get("/items/{item_id}", dependencies=[Depends(auth)])
    async def item(item_id: int = PathParam(..., ge=0)):
        found = engine.item(item_id)
        if found is None:
            raise HTTPException(404, f"no item with id {item_id}")
        return _public(found)

    @app.get("/thumb/{item_id}", dependencies=[Depends(auth)],
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumb(item_id: int = PathParam(..., ge=0)):
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
                raise HTTPException(404, f"the file of id {item_id} cannot be read now ({type(e).__name__})")
            with thumbs_lock:
                thumbs[item_id] = data
                while len(thumbs) > limits.thumb_cache:
                    thumbs.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    app.state.engine = engine
    return app
