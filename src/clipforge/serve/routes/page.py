"""GET / : the search page, and /static: its files (no build step). Public: the page asks for the key."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from clipforge.serve.state import ServeState

STATIC = Path(__file__).parents[1] / "static"


def router(state: ServeState) -> APIRouter:
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    r.mount("/static", StaticFiles(directory=STATIC), name="static")
    return r
