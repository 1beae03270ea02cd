"""POST /classify: zero-shot probabilities of the labels a user typed for one image (`serve.classify`)."""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from clipforge.serve.guards import classify_model
from clipforge.serve.responses import error_responses
from clipforge.serve.state import ServeState


def router(state: ServeState) -> APIRouter:
    r = APIRouter()
    ClassifyIn = classify_model(state.limits, state.classifier.template_sets())

    async def classify(req):
        def work():
            image = state.images.request()(req.image, "image")
            return state.classifier.classify(image, req.labels, req.templates)

        res = await state.in_thread(work, "classification")
        state.counters.classifications += 1
        return JSONResponse(res)

    classify.__annotations__["req"] = ClassifyIn  # a class built for these limits
    r.post("/classify", dependencies=[Depends(state.auth)],
           responses=error_responses(422, 503, key=state.keyed))(classify)
    return r
