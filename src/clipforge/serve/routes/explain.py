"""POST /explain: where in an image each text matches (`clipforge.explain`), as arrays or a PNG.

The image is a base64 upload (`image`) or an indexed item (`id`: the page's "where?" toggle on a result; the id
maps to a file the index recorded, so nothing from a request becomes a path). The limits are /search's: the
body and decoded-image budgets (`images.ImageDecoder`), at most `Limits.max_terms` texts of at most
`max_query_chars` each, the per-request timeout, the API key. `format`: `array` (JSON: grid, maps, pooled
scores, peaks in image pixels), `png` (the explain figure: one panel per text with its legend) or `overlay`
(an RGBA PNG of the first text's map at the image's aspect, at most `thumb_size` a side, to lay over a
thumbnail). Maps run on the index model's own torch towers, whatever engine embeds the queries.
"""
from __future__ import annotations

import io
from typing import Annotated, Literal, Optional

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from clipforge.encode import Encoder
from clipforge.explain import EXPLAIN_METHODS, explain, render_explanation
from clipforge.explain.render import colorize
from clipforge.serve.guards import ItemId
from clipforge.serve.patterns import BASE64_IMAGE, NON_BLANK, ONE_IMAGE
from clipforge.serve.responses import error_responses
from clipforge.serve.state import ServeState

OVERLAY_ALPHA = 150  # of 255: the thumbnail stays visible under the colours


def _overlay_png(grid_map: np.ndarray, image_size: tuple[int, int], side: int) -> bytes:
    w, h = image_size
    scale = min(1.0, side / max(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    lo, hi = float(grid_map.min()), float(grid_map.max())
    unit = (grid_map - lo) / (hi - lo) if hi > lo else np.zeros_like(grid_map)
    up = Image.fromarray((unit * 255).astype(np.uint8), mode="L").resize(size, Image.BILINEAR)
    rgba = np.dstack([colorize(np.asarray(up, np.float32) / 255.0), np.full(up.size[::-1], OVERLAY_ALPHA, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    return buf.getvalue()


def router(state: ServeState) -> APIRouter:
    r = APIRouter()
    limits = state.limits
    Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_query_chars, pattern=NON_BLANK)]

    class ExplainIn(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_IMAGE)
        image: Optional[Annotated[str, StringConstraints(min_length=1, pattern=BASE64_IMAGE)]] = Field(
            None, description="the image, base64 (a data: URL prefix is accepted); or give `id`")
        id: Optional[ItemId] = Field(None, description="an indexed item instead of an upload")
        texts: list[Text] = Field(..., min_length=1, max_length=limits.max_terms,
                                  description=f"the texts to locate (one map each, at most {limits.max_terms})")
        method: Literal[EXPLAIN_METHODS] = Field("auto", description="auto | maskclip | tokens | gradcam "
                                                                      "(docs/explain.md)")
        format: Literal["array", "png", "overlay"] = Field("array", description="array (JSON), png (the figure) "
                                                                                "or overlay (RGBA, first text)")

        @model_validator(mode="after")
        def one_image(self):
            if (self.image is None) == (self.id is None):
                raise ValueError("give exactly one of `image` (an upload) and `id` (an indexed item)")
            return self

    held: dict = {}

    def encoder() -> Encoder:
        enc = state.searcher.encoder
        if enc.engine.name == "torch":
            return enc
        if "torch" not in held:  # an exported engine embeds the queries; the maps need the model's own towers
            held["torch"] = Encoder.from_model(enc.model)
        return held["torch"]

    def load(req):
        if req.image is not None:
            return state.images.request()(req.image, "image")
        return state.item_image(req.id)

    async def explain_route(req):
        def work():
            image = load(req)
            ex = explain(encoder(), image, req.texts, method=req.method, max_texts=limits.max_terms)
            if req.format == "array":
                return ex.to_dict()
            if req.format == "overlay":
                return _overlay_png(ex.maps[0], ex.image_size, limits.thumb_size)
            buf = io.BytesIO()
            render_explanation(image, ex).save(buf, format="PNG")
            return buf.getvalue()

        out = await state.in_thread(work, "explanation")
        return JSONResponse(out) if isinstance(out, dict) else Response(out, media_type="image/png")

    explain_route.__annotations__["req"] = ExplainIn  # a class built for these limits
    r.post("/explain", dependencies=[Depends(state.auth)],
           responses=error_responses(400, 404, 413, 422, 503, key=state.keyed))(explain_route)
    return r
