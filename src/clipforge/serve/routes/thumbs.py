"""GET /thumb/{id}: a JPEG thumbnail of an indexed file, kept in the reload-scoped cache (`state.ViewCache`).

The id must map to a regular file recorded in the index, so nothing from a request becomes a path.
"""
from __future__ import annotations

import io
import warnings

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from PIL import Image, ImageOps
from starlette.exceptions import HTTPException

from clipforge.data.decode import BadSample, read_bytes, to_rgb
from clipforge.serve.item_ids import item_id_param
from clipforge.serve.responses import error_responses
from clipforge.serve.state import ServeState


def thumbnail(path: str, size: int, max_pixels: int) -> bytes:
    """A JPEG of the image at `path`, at most `size` pixels a side."""
    data = read_bytes(path)  # a regular file under the size cap: a FIFO swapped in after indexing cannot block
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > max_pixels:
                raise OSError(f"{im.width}x{im.height} is over the pixel limit")
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale
            im = to_rgb(ImageOps.exif_transpose(im))
            im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def router(state: ServeState) -> APIRouter:
    r = APIRouter()
    limits = state.limits

    @r.get("/thumb/{item_id}", dependencies=[Depends(state.auth)],
           responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404, 422, key=state.keyed)})
    async def thumb(item_id: int = Depends(item_id_param)):
        data = state.cache.thumb(item_id)
        if data is None:
            path = state.searcher.path_of(item_id)  # only files recorded in the index
            if path is None:
                raise HTTPException(404, f"no indexed file for id {item_id}")
            try:
                data = await run_in_threadpool(thumbnail, path, limits.thumb_size, limits.max_image_pixels)
            except Exception as e:  # noqa: BLE001 - unreadable, vanished or oversized: not a server error
                why = e.reason if isinstance(e, BadSample) else type(e).__name__
                raise HTTPException(404, f"the file of id {item_id} cannot be read now ({why})") from None
            state.cache.put_thumb(item_id, data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return r
