"""GET /healthz (liveness, public) and GET /stats (counts, model, index, latency, caches, limits)."""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
from fastapi import APIRouter, Depends

from clipforge.models.families import can_caption
from clipforge.serve.public import HIDDEN_COLUMNS, public_stats
from clipforge.serve.responses import error_responses
from clipforge.serve.state import ServeState


def router(state: ServeState) -> APIRouter:
    r = APIRouter()
    searcher, counters = state.searcher, state.counters

    @r.get("/healthz", responses=error_responses())
    async def healthz():
        return {"status": "ok", "count": len(searcher.index)}

    @r.get("/stats", dependencies=[Depends(state.auth)], responses=error_responses(key=state.keyed))
    async def get_stats():
        lat = np.array(counters.latencies) if counters.latencies else np.zeros(1)
        return {**public_stats(searcher.stats(), HIDDEN_COLUMNS),
                "uptime_s": round(time.time() - counters.started, 1),
                "searches": counters.searches, "searches_inline": counters.inline,
                "classifications": counters.classifications, "deletes": counters.deletes,
                "errors": counters.errors, "thumbs_cached": state.cache.thumbs_cached,
                "search_ms_p50": round(float(np.percentile(lat, 50)), 3),
                "search_ms_p99": round(float(np.percentile(lat, 99)), 3), "limits": asdict(state.limits),
                "template_sets": state.classifier.template_sets(),
                "can_caption": can_caption(getattr(searcher.encoder, "model", None))}

    return r
