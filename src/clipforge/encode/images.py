"""The one image opener for images named one at a time (a query image, an image to embed, Python).

Collections are read through their `Source` (each `Sample` decodes itself); single images come here. Both
end in `clipforge.data.decode`, so the same file gives the same pixels everywhere: the pixel-bomb limit is
checked before decoding, EXIF orientation is applied, and any mode (CMYK, 16-bit, palette, alpha) becomes
8-bit RGB.
"""
from __future__ import annotations

import os
from typing import Union

from PIL import Image

from clipforge.data.decode import DEFAULT_MAX_PIXELS, BadSample, DecodeOptions, decode_image, read_bytes, to_rgb
from clipforge.errors import UsageError

__all__ = ["ImageInput", "ImageError", "open_image"]

ImageInput = Union[str, os.PathLike, bytes, bytearray, Image.Image]


class ImageError(UsageError):
    """An image given by the caller cannot be used. `reason` is one of `clipforge.data.decode.REASONS`."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def open_image(image: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A path, encoded bytes or a PIL image -> an RGB PIL image, upright (EXIF applied).

    Raises `ImageError` (a `UsageError`) naming the reason when the image is missing, unreadable, or over
    `max_pixels` (None disables the limit). A PIL image is taken as the caller decoded it: checked against the
    limit and converted to RGB, its pixels not reoriented (a transposed copy keeps its source's EXIF tag, so
    applying it again would turn the image twice).
    """
    what = "image" if isinstance(image, (bytes, bytearray, Image.Image)) else f"image {str(image)!r}"
    try:
        if isinstance(image, Image.Image):
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise BadSample("too_large", f"{image.width}x{image.height} = {image.width * image.height} px "
                                             f"> max_pixels {max_pixels}")
            try:
                return to_rgb(image)
            except Exception as e:  # noqa: BLE001 - any conversion failure is the image's fault
                raise BadSample("unsupported_mode", f"{image.mode}: {e}") from None
        data = bytes(image) if isinstance(image, (bytes, bytearray)) else read_bytes(image)
        return decode_image(data, DecodeOptions(max_pixels=max_pixels))
    except BadSample as e:
        raise ImageError(f"{what}: {e.reason}" + (f" ({e.detail})" if e.detail else ""), e.reason) from None
