"""Query images, decoded a bounded number at a time and within one memory budget per request.

A 77 KB PNG can hold 6300 x 6300 16-bit pixels: ~200 MB decoded. `decode_b64_image` refuses one image whose
decode would hold more than `Limits.max_decoded_bytes` (from its header, before any pixel), but six such
requests at once held 1.7 GB, and one request may carry an image in each of its terms. `ImageDecoder` bounds
both: at most `Limits.max_concurrent_decodes` decodes run at once in a server process, and a request that
finds every slot taken gets 503 with `Retry-After` at once (waiting would hold its thread and body); the images
of one request share one `max_decoded_bytes` budget (each decode may use what those decoded before it leave).
"""
from __future__ import annotations

import threading

from starlette.exceptions import HTTPException

from clipforge.data.decode import mode_bytes
from clipforge.errors import UsageError
from clipforge.serve.guards import Limits, decode_b64_image

__all__ = ["ImageDecoder", "RETRY_AFTER_S"]

RETRY_AFTER_S = 1  # a 503 for a busy decoder: the client may try again this soon


class ImageDecoder:
    """One per app: `request()` gives the decoder of one request."""

    def __init__(self, limits: Limits):
        n = limits.max_concurrent_decodes
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"`max_concurrent_decodes` must be a whole number >= 1, got {n!r}")
        self.limits, self.slots = limits, threading.BoundedSemaphore(n)

    def busy(self) -> HTTPException:
        return HTTPException(503, f"the server is decoding as many images as it may at once "
                                  f"({self.limits.max_concurrent_decodes}); try again in {RETRY_AFTER_S} s",
                             headers={"Retry-After": str(RETRY_AFTER_S)})

    def request(self):
        """`decode(data, what)` -> an RGB PIL image, for one request (its images share one budget); raises
        HTTPException 400 / 413 for a bad or oversized image, 503 when every decode slot is taken."""
        held = 0  # bytes of this request's images decoded so far

        def decode(data: str, what: str):
            nonlocal held
            budget = self.limits.max_decoded_bytes
            if held >= budget:
                raise HTTPException(413, f"{what}: this request's images together are over the decoded-memory "
                                         f"budget ({budget} bytes)")
            if not self.slots.acquire(blocking=False):
                raise self.busy()
            try:
                image = decode_b64_image(data, self.limits.max_image_pixels, what, budget - held)
            except HTTPException as e:
                if e.status_code == 413 and held:  # over what the request's earlier images left
                    raise HTTPException(413, f"{e.detail}; this request's images share one budget of {budget} "
                                             f"bytes, and those before it hold {held}") from None
                raise
            finally:
                self.slots.release()
            held += image.width * image.height * mode_bytes(image.mode)
            return image

        return decode
