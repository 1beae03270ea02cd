"""How every failure becomes the one JSON error shape (`guards.error_response`), counted in /stats.

HTTP errors keep their status (and headers: Retry-After; a 405 names every method of its path in `Allow`),
a validation error is a 422 naming the fields and what their patterns mean, library errors are 422
(`UsageError`) or 400, a full or read-only disk is 507 / 503 without the server's paths, and anything else
is logged and answered 500 with no details.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from clipforge.errors import ClipforgeError, DiskError, UsageError, disk_error
from clipforge.serve.guards import INT64_MAX, error_response
from clipforge.serve.state import Counters

__all__ = ["PATTERN_MEANS", "disk_reason", "disk_status", "install_error_handlers"]

log = logging.getLogger("clipforge.serve")

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


def _routes(routes):
    """Every route, inside included routers too (recent FastAPI keeps an included router whole)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield r


def allowed_methods(app: FastAPI, path: str) -> str:
    """The methods the routes at `path` take (all of them: the router's own 405 names one route's)."""
    methods = {m for r in _routes(app.router.routes) if getattr(r, "methods", None) and r.path_regex.match(path)
               for m in r.methods}
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI, counters: Counters) -> None:
    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        if exc.status_code >= 400:
            counters.errors += 1
        response = error_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # e.g. Retry-After
        if exc.status_code == 405:
            response.headers["Allow"] = allowed_methods(request.app, request.url.path)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        counters.errors += 1
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
        counters.errors += 1
        if isinstance(exc, DiskError):  # its message names server paths
            return error_response(disk_status(exc), disk_reason(exc))
        return error_response(422 if isinstance(exc, UsageError) else 400, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # a bug: logged here, no details to the client
        counters.errors += 1
        disk = disk_error(exc)
        if disk is not None:  # not a bug: the disk is full or read-only
            log.warning("%s %s: %s", request.method, request.url.path, disk)
            return error_response(disk_status(disk), disk_reason(disk))
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error")
