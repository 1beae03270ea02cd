"""The service's defences, shared by every route: limits, request schemas, the API key, body and header caps,
base64 images, and the one JSON error shape. Beside them: `hosts.py` (the Host allowlist), `images.py`
(decodes at once, and per request) and `transport.py` (slow clients).

Request bodies are pydantic models built for a server's `Limits`, so /openapi.json documents each limit and a
request beyond one is refused (422) before any work. Types are JSON's: `true` is not 1, "5" is not 5, and
unknown fields are refused.
"""
from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator
from starlette.exceptions import HTTPException

from clipforge.data.decode import DEFAULT_MAX_DECODED_BYTES, BadSample, DecodeOptions, decode_image
from clipforge.serve.patterns import BASE64_IMAGE, FILTER, NON_BLANK

__all__ = ["Limits", "INT64_MAX", "ItemId", "PUBLIC_PATHS", "PUBLIC_PREFIXES", "FILTER_PATTERN", "request_models",
           "classify_model", "error_body", "error_response", "ApiKeyAuth", "BodyLimit", "decode_b64_image"]

INT64_MAX = 2**63 - 1
# Reachable without the API key: the page (it asks for the key), its files, liveness, and the API's own docs
# (which describe the API, never the data).
PUBLIC_PATHS = ("/", "/healthz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc")
PUBLIC_PREFIXES = ("/static/",)
FILTER_PATTERN = r"^\s*[A-Za-z_][\w.]*\s*(!=|<=|>=|\*=|=|<|>|~)\s*\S"  # COLUMN OP VALUE (filters.parse_filter)


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
    max_labels: int = 100                # /classify: class names per request
    max_label_chars: int = 200           # /classify: each class name
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES  # one request's images together, decoded (peak)
    max_concurrent_decodes: int = 2      # images decoded at once by one server process; more: 503 + Retry-After
    timeout_s: float = 30.0
    thumb_size: int = 256
    thumb_cache: int = 4096              # thumbnails kept in memory (≈ 10 KB each)
    # the transport (transport.GuardedProtocol): slow clients
    head_timeout_s: float = 10.0         # the whole request head must arrive within this (else 408)
    body_timeout_s: float = 10.0         # a request body must not stall for longer (else 408)
    max_connections_per_ip: int = 16     # open connections from one client address (0: no limit; else 503)


def _json_int(value):
    """JSON Schema's integer: 3 or 3.0, never `true` or "3" (pydantic's lax mode takes those as numbers)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("Input should be a valid integer")
    return value


# An item id in a JSON body: int64 as the schema says (3 or 3.0, never `true` or "3"); a larger one names no item
# (404), as validators comparing JSON numbers as doubles cannot enforce the bound exactly.
ItemId = Annotated[int, Field(ge=0, json_schema_extra={"maximum": INT64_MAX}), BeforeValidator(_json_int)]


def request_models(limits: Limits, rerank: bool = True,
                   hidden: tuple[str, ...] = ()) -> tuple[type[BaseModel], type[BaseModel]]:
    """(TermIn, SearchIn) with this server's limits in their schema. `rerank`: whether the server has a second
    stage (without one, the schema takes `rerank` false or null only). `hidden`: metadata columns filters may
    not name (documented in the `filters` description)."""
    Query = Annotated[str, StringConstraints(max_length=limits.max_query_chars)]
    FilterStr = Annotated[str, StringConstraints(max_length=limits.max_filter_chars, pattern=FILTER)]
    Image = Annotated[str, StringConstraints(min_length=1, pattern=BASE64_IMAGE)]
    # what the validators below require, in the schema too (a client sees the rule before sending)
    one_of_text_image = [{"required": [a], "properties": {a: {"type": "string"}, b: {"type": "null"}}}
                         for a, b in (("text", "image"), ("image", "text"))]
    some_query = [{"required": ["text"], "properties": {"text": {"type": "string", "pattern": NON_BLANK}}},
                  {"required": ["image"], "properties": {"image": {"type": "string"}}},
                  {"required": ["terms"], "properties": {"terms": {"type": "array", "minItems": 1}}},
                  {"required": ["like"], "properties": {"like": {"type": "integer"}}}]
    not_filterable = (f" Not filterable here: {', '.join(hidden)} (server file paths, never shown in results);"
                      " a filter naming one is a 422." if hidden else "")
    if rerank:
        Rerank = Optional[bool]
        rerank_doc = "false returns the first stage's ranking only (default: rerank with the second stage)"
        rerank_strict = {"strict": True}
    else:
        Rerank = Optional[Literal[False]]  # type: ignore[assignment,misc]
        rerank_doc = "this server has no second stage: false or null (the first stage's ranking) only"
        rerank_strict = {}  # a literal is exact already

    class TermIn(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": one_of_text_image})
        text: Optional[Query] = Field(None, description="a text term (plain text, never a file path)")
        image: Optional[Image] = Field(None, description="a base64 image (a data: URL prefix is accepted)")
        weight: float = Field(1.0, ge=-100, le=100, strict=True, description="negative weights push results away")

        @model_validator(mode="after")
        def _one_of_text_image(self):
            if (self.text is None) == (self.image is None):
                raise ValueError("each term needs exactly one of text or image")
            return self

    class SearchIn(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": some_query})
        text: Optional[Query] = Field(None, description='query language: plain text or \'"a" + 0.5*"b" - "c"\'')
        image: Optional[Image] = Field(None, description="base64 query image, composed with text when both "
                                       "given (a data: URL prefix is accepted)")
        text_weight: float = Field(1.0, ge=-100, le=100, strict=True)
        image_weight: float = Field(1.0, ge=-100, le=100, strict=True)
        terms: list[TermIn] = Field(default_factory=list, max_length=limits.max_terms,
                                    description="extra weighted text / image terms")
        # ids are int64, as the schema says; a larger `like` names no item: 404, like any id not in the index
        # (a bound the server enforced would disagree with validators that compare JSON numbers as doubles)
        like: Optional[ItemId] = Field(
            None, description="an item id: more like this (404 when no item has it)")
        k: Annotated[int, Field(ge=1, le=limits.max_k), BeforeValidator(_json_int)] = Field(
            20, description="results per page")
        offset: Annotated[int, Field(ge=0, le=limits.max_offset), BeforeValidator(_json_int)] = 0
        filters: list[FilterStr] = Field(default_factory=list, max_length=limits.max_filters,
                                         description="COLUMN OP VALUE, all must match, e.g. caption*=dog, "
                                                     "key~*/beach/*, size>=1000 (OP: = != < <= > >= ~ glob, "
                                                     "*= substring). Columns: the metadata columns /stats "
                                                     "lists." + not_filterable)
        dedup: Optional[Annotated[float, Field(ge=0.0, le=1.0, strict=True)]] = Field(
            None, description="collapse hits with cosine above this")
        rerank: Rerank = Field(None, description=rerank_doc, **rerank_strict)  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _some_query(self):
            if not ((self.text is not None and self.text.strip()) or self.image is not None or self.terms
                    or self.like is not None):
                raise ValueError("a query needs text (not blank), an image, terms, or `like` (an item id)")
            return self

    return TermIn, SearchIn


def classify_model(limits: Limits, template_sets: list[str]) -> type[BaseModel]:
    """ClassifyIn: one image and the class names to score it against."""
    Label = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_label_chars, pattern=NON_BLANK)]
    TemplateSet = Literal[tuple(template_sets)]  # names only: a request never names a file

    class ClassifyIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        image: Annotated[str, StringConstraints(min_length=1, pattern=BASE64_IMAGE)] = Field(
            ..., description="the image, base64 (a data: URL prefix is accepted)")
        labels: list[Label] = Field(..., min_length=1, max_length=limits.max_labels,
                                    json_schema_extra={"uniqueItems": True},
                                    description="class names, e.g. [\"cat\", \"dog\", \"a red car\"], each "
                                                "different from the others")
        templates: Optional[TemplateSet] = Field(  # type: ignore[valid-type]
            None, description="prompt template set (default openai_imagenet: 80 prompts per label)")

    return ClassifyIn


def error_body(status: int, message: str) -> dict:
    """The one error shape: {"error": {"status": N, "message": "..."}}."""
    return {"error": {"status": status, "message": message}}


def error_response(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    """The one error shape as a response (`headers`: e.g. an HTTPException's Retry-After or Allow)."""
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


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
            return await error_response(401, "missing or wrong API key (send it in the X-API-Key header)")(
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
            return await error_response(431, f"request headers of {head} bytes are over the "
                                             f"{self.max_header_bytes} byte limit")(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    return await error_response(400, "invalid Content-Length header")(scope, receive, send)
                if n > self.max_bytes:
                    return await error_response(413, f"request body of {n} bytes is over the {self.max_bytes} "
                                                     "byte limit")(scope, receive, send)
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


def decode_b64_image(data: str, max_pixels: int, what: str,
                     max_decoded_bytes: Optional[int] = DEFAULT_MAX_DECODED_BYTES):
    """A base64 (or data: URL) image -> RGB PIL image through the safe decoder, refused from its header when
    over `max_pixels` or when decoding it would hold more than `max_decoded_bytes`; 400 / 413 otherwise."""
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"{what}: not valid base64") from None
    try:
        return decode_image(raw, DecodeOptions(max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes))
    except BadSample as e:
        if e.reason == "too_large":
            # over the pixel limit (`max_pixels`) or the decoded-memory budget: the detail says which
            raise HTTPException(413, f"{what}: too large to decode ({e.detail})") from None
        raise HTTPException(400, f"{what}: not a readable image ({e.reason})") from None
