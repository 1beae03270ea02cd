"""GET /items/{id}: an item's public metadata; DELETE /items/{id}: remove it from the index.

Deleting needs a server started with an API key (403 otherwise): without one, anyone who can reach the port
could empty the index. A delete on a full disk is a 507, on a read-only file system a 503; nothing is deleted
and reads go on. A DELETE refreshes its own worker's view before answering.
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from clipforge.errors import DiskError
from clipforge.retrieval.delete import delete_items
from clipforge.retrieval.store import StoreBusy
from clipforge.serve.error_handlers import disk_reason, disk_status
from clipforge.serve.item_ids import item_id_param
from clipforge.serve.public import public_item
from clipforge.serve.responses import error_responses
from clipforge.serve.state import ServeState

log = logging.getLogger("clipforge.serve")


def router(state: ServeState) -> APIRouter:
    r = APIRouter()
    searcher = state.searcher

    @r.get("/items/{item_id}", dependencies=[Depends(state.auth)],
           responses=error_responses(404, 422, key=state.keyed))
    async def item(item_id: int = Depends(item_id_param)):
        found = searcher.item(item_id)
        if found is None:
            raise HTTPException(404, f"no item with id {item_id}")
        return JSONResponse(public_item(found))

    @r.delete("/items/{item_id}", dependencies=[Depends(state.auth)],
              responses=error_responses(403, 404, 409, 422, 503, 507, key=state.keyed))
    async def delete_item(item_id: int = Depends(item_id_param)):
        if not state.keyed:
            raise HTTPException(403, "deleting needs a server started with an API key")
        if searcher.item(item_id) is None:
            raise HTTPException(404, f"no item with id {item_id}")

        def work():
            try:
                res = delete_items(searcher.root, ids=[item_id])
            except StoreBusy:
                raise HTTPException(409, "the index is being changed by another process (an index update or "
                                         "delete); try again when it is done") from None
            except DiskError as e:  # nothing was deleted; reads go on from the unchanged index
                log.warning("DELETE /items/%d: %s", item_id, e)
                raise HTTPException(disk_status(e), disk_reason(e, "nothing was deleted")) from None
            searcher.refresh()  # this worker answers from the new view from now on
            return res

        res = await state.in_thread(work, "delete")
        if not res["deleted"]:  # deleted meanwhile by another request or process
            raise HTTPException(404, f"no item with id {item_id}")
        state.counters.deletes += 1
        return JSONResponse({"deleted": [item_id], "count": res["count"]})

    return r
