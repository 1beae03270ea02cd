"""The error responses each route documents in /openapi.json, with the one JSON error shape as their model.

Every error the service sends is {"error": {"status": N, "message": "..."}} (`guards.error_response`); this
module says which statuses each route can answer and why, so the schema lists every status a client can
get (schema-driven clients and fuzzers check that nothing undocumented comes back).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ErrorOut", "REASONS", "error_responses"]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: int
    message: str


class ErrorOut(BaseModel):
    """The body of every error response."""
    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


REASONS = {
    400: "malformed request: an invalid Content-Length, or (images) base64 whose bytes are not a readable image",
    401: "missing or wrong API key (X-API-Key header)",
    403: "forbidden: deleting needs a server started with an API key",
    404: "no such item, or its file cannot be read now",
    409: "the index is being changed by another process; try again when it is done",
    413: "request body, or a query image's pixels or decoded size, over this server's limit",
    422: "the request does not fit the schema or this server's limits, or names what the index lacks (an "
         "unknown filter column, a `like` id not in the index, a query-language error, a model that cannot "
         "caption)",
    431: "request headers over this server's limit",
    500: "internal error (no details are given)",
    503: "the work took longer than this server's timeout, or the index is on a read-only file system; "
         "try again",
    507: "the index's disk is full (nothing was changed)",
}
# what any route can answer before it runs: the body / header caps, a broken Content-Length, a bug
_ANY = (400, 413, 431, 500)


def error_responses(*statuses: int, key: bool = False) -> dict:
    """`responses=` for a route that can answer `statuses` (plus what every route can), 401 when `key`."""
    codes = sorted({*statuses, *_ANY, *((401,) if key else ())})
    # keys as strings: FastAPI then adds no 422 of its own (its validation-error model, never sent here)
    return {str(code): {"model": ErrorOut, "description": REASONS[code]} for code in codes}
