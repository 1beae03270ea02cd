"""Keep decoded training images in memory across epochs, within a byte budget.

A small dataset trained for many epochs (the digits demo: 1,437 images, 22 epochs in 250 steps) decodes every
image again each epoch; with `data.workers: 0` that decode runs on the training thread, between steps. The
cache holds the decoded RGB image of each sample index the first time it is read, until `max_bytes` of pixels
are held; after that it simply stops adding (no eviction: the first images stay, the rest decode as before),
so memory is bounded and nothing churns. Only successfully decoded images are kept: a bad file raises
`BadSample` every time it is read, exactly as without the cache, and is skipped and counted the same way.

The random augmentation is applied to the cached image afresh each time (the transforms never modify their
input), so batches are identical with and without the cache — tested.

It lives in the process that reads: the trainer passes one to the loader only when `data.workers` is 0 (worker
processes are started anew each epoch, so a cache there would be refilled every epoch).
"""
from __future__ import annotations

import threading
from typing import Optional

from PIL import Image

__all__ = ["DecodedImageCache"]


class DecodedImageCache:
    """Index -> decoded PIL image, first come first kept, up to `max_bytes` of pixel data."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._images: dict[int, Image.Image] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    def get(self, index: int) -> Optional[Image.Image]:
        img = self._images.get(index)
        if img is None:
            self.misses += 1
        else:
            self.hits += 1
        return img

    def put(self, index: int, image: Image.Image) -> bool:
        """Keep `image` if it fits in what is left of the budget; returns whether it was kept."""
        size = image.width * image.height * len(image.getbands())
        with self._lock:
            if index in self._images or self.nbytes + size > self.max_bytes:
                return False
            image.load()
            self._images[index] = image
            self.nbytes += size
            return True

    def stats(self) -> dict:
        return {"images": len(self._images), "bytes": self.nbytes, "hits": self.hits, "misses": self.misses}
