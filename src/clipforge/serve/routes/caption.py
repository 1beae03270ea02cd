"""POST /caption: a caption of one image from the index's model, when that model can caption (a CoCa).

The same guards as /search and /classify: the body and decoded-image limits (`images.ImageDecoder`), the
per-request timeout, the API key. A model without a caption decoder answers 422 naming that. `max_tokens`
is bounded by the model's context and by MAX_TOKENS; beam width by MAX_BEAMS (each step costs beams x the
image's decoder pass)."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from clipforge.encode.captioner import Captioner
from clipforge.models.families import can_caption
from clipforge.serve.guards import ItemId
from clipforge.serve.patterns import BASE64_IMAGE, ONE_IMAGE
from clipforge.serve.responses import error_responses
from clipforge.serve.state import ServeState

MAX_TOKENS = 64
MAX_BEAMS = 8


class CaptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_IMAGE)
    image: Optional[Annotated[str, StringConstraints(min_length=1, pattern=BASE64_IMAGE)]] = Field(
        None, description="the image, base64 (a data: URL prefix is accepted); or give `id`")
    id: Optional[ItemId] = Field(None, description="an indexed item instead of an upload (the page's caption button)")
    method: Literal["greedy", "beam", "top_p"] = Field("beam", description="decoding (default beam)")
    max_tokens: int = Field(20, ge=1, le=MAX_TOKENS, description="most tokens in the caption (default 20)")
    beams: int = Field(4, ge=1, le=MAX_BEAMS, description="beam width for method beam (default 4)")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus mass for method top_p (default 0.9)")
    seed: Optional[int] = Field(None, ge=0, description="sampling seed for top_p (default: a random draw)")

    @model_validator(mode="after")
    def one_image(self):
        if (self.image is None) == (self.id is None):
            raise ValueError("give exactly one of `image` (an upload) and `id` (an indexed item)")
        return self


def router(state: ServeState) -> APIRouter:
    r = APIRouter()
    held: dict = {}

    def captioner() -> Captioner:
        if "cap" not in held:
            model = getattr(state.searcher.encoder, "model", None)
            if model is None or not can_caption(model):
                raise HTTPException(422, "this index's model cannot caption (it has no caption decoder; index "
                                         "with a CoCa model to get captions)")
            held["cap"] = Captioner(model)
        return held["cap"]

    @r.post("/caption", dependencies=[Depends(state.auth)], responses=error_responses(400, 404, 413, 422, 503, key=state.keyed))
    async def caption(req: CaptionIn):
        cap = captioner()
        if req.max_tokens > cap.max_tokens_limit:
            raise HTTPException(422, f"max_tokens {req.max_tokens} is over this model's {cap.max_tokens_limit}")

        def work():
            image = state.images.request()(req.image, "image") if req.image is not None else \
                state.item_image(req.id)
            return cap.caption([image], method=req.method, max_tokens=req.max_tokens, beams=req.beams,
                               top_p=req.top_p, seed=req.seed)[0]

        text = await state.in_thread(work, "captioning")
        return JSONResponse({"caption": text, "method": req.method})

    return r
