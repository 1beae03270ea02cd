"""What every route of one app shares: the searcher and services, the limits, the counters /stats shows, and
the one reload-scoped cache.

`ViewCache` holds everything the service derives from the index's current view (an item's public form,
thumbnails): all of it is dropped together the moment the searcher swaps in a new view (`IndexSearcher.refresh`),
since an item, or the file behind it, may have changed. Anything new derived from the index belongs there.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException

from clipforge.encode.images import ImageError, open_image
from clipforge.serve.classify import ClassifyService
from clipforge.serve.guards import INT64_MAX, Limits
from clipforge.serve.images import ImageDecoder
from clipforge.serve.public import public_item

__all__ = ["Counters", "ServeState", "ViewCache", "PUBLIC_ITEM_CACHE"]

PUBLIC_ITEM_CACHE = 65_536  # items whose public form is kept (a few hundred bytes each)


@dataclass
class Counters:
    """What /stats reports of the requests served (latencies: the last 2000 searches, in ms)."""
    started: float = field(default_factory=time.time)
    searches: int = 0
    inline: int = 0  # searches answered on the event loop (cached texts, small index)
    classifications: int = 0
    deletes: int = 0
    errors: int = 0
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2000))


class ViewCache:
    """Public item forms and thumbnails of the searcher's current view (see the module docstring)."""

    def __init__(self, searcher, max_thumbs: int, max_items: int = PUBLIC_ITEM_CACHE):
        self.searcher, self.max_thumbs, self.max_items = searcher, max_thumbs, max_items
        self._reloads = searcher.reloads
        self._lock = threading.Lock()
        self._items: dict[int, dict] = {}  # an item's public form is the same in every result
        self._thumbs: collections.OrderedDict[int, bytes] = collections.OrderedDict()  # LRU

    def _current(self) -> None:
        """Drop everything if the searcher swapped views since (call under the lock)."""
        if self._reloads != self.searcher.reloads:
            self._items.clear()
            self._thumbs.clear()
            self._reloads = self.searcher.reloads

    def public_items(self, hits) -> list[dict]:
        """The public form of each hit's item (`public.public_item`), cached per id."""
        with self._lock:
            self._current()
            out = []
            for hit in hits:
                base = self._items.get(hit.id)
                if base is None:
                    base = public_item({"id": hit.id, **hit.metadata})
                    if len(self._items) >= self.max_items:
                        self._items.clear()
                    self._items[hit.id] = base
                out.append(base)
            return out

    def thumb(self, item_id: int) -> Optional[bytes]:
        with self._lock:
            self._current()
            data = self._thumbs.get(item_id)
            if data is not None:
                self._thumbs.move_to_end(item_id)
            return data

    def put_thumb(self, item_id: int, data: bytes) -> None:
        with self._lock:
            self._thumbs[item_id] = data
            while len(self._thumbs) > self.max_thumbs:
                self._thumbs.popitem(last=False)

    @property
    def thumbs_cached(self) -> int:
        return len(self._thumbs)


async def _no_auth():
    """Without a key: an async no-op (FastAPI runs a plain function dependency in the thread pool, one hop
    per request)."""
    return None


class ServeState:
    """One app's shared state: what each router factory (`routes/`) is given."""

    def __init__(self, searcher, limits: Limits, api_key: Optional[str] = None):
        self.searcher, self.limits, self.api_key = searcher, limits, api_key  # searcher: an IndexSearcher
        self.classifier = ClassifyService(searcher)
        self.images = ImageDecoder(limits)  # decodes at once, and each request's images within one budget
        self.cache = ViewCache(searcher, limits.thumb_cache)
        self.counters = Counters()
        # ApiKeyAuth has checked the key before any route runs; this dependency only declares the scheme, so
        # /docs offers "Authorize" and clients see that X-API-Key is expected.
        self.auth = APIKeyHeader(name="X-API-Key", auto_error=False) if self.keyed else _no_auth

    @property
    def keyed(self) -> bool:
        """Whether the server has an API key: every route but the public ones may answer 401."""
        return self.api_key is not None

    def item_image(self, item_id: int):
        """The decoded image of indexed item `item_id`, within the decoded-pixel limit: 404 when there is no such
        item or file, 422 when it is too large (the "where?" and "caption" buttons on a result)."""
        path = self.searcher.path_of(item_id) if item_id <= INT64_MAX else None
        if path is None:
            raise HTTPException(404, f"no item with id {item_id}, or it has no image file")
        try:
            return open_image(path, max_pixels=self.limits.max_image_pixels)
        except ImageError as e:
            raise HTTPException(422 if e.reason == "too_large" else 404,
                                f"item {item_id}: its image cannot be read ({e.reason})") from None

    async def in_thread(self, fn: Callable, what: str):
        """`fn()` in the thread pool, given at most `limits.timeout_s` (503 after)."""
        try:
            return await asyncio.wait_for(run_in_threadpool(fn), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"the {what} took longer than {self.limits.timeout_s} s; try again") from None
