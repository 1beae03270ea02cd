"""`Captioner`: batched captions from a captioning model (CoCa), on the encoding layer's device, precision and
image policies.

    cap = Captioner.load("runs/coca/final")                    # or Captioner(model)
    cap.caption(["cat.jpg", pil_image, raw_bytes])             # ["a photo of a cat", ...]
    cap.caption(images, method="top_p", top_p=0.9, seed=0)     # greedy | beam | top_p, max_tokens, min_tokens
    for ids, captions in cap.caption_source(src, batch_size=64):   # every readable image of a source
        ...

The images go through the model's eval preprocessing and the image tower once per batch; generation
(`models.generation`) then runs the decoder on each batch's image tokens.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from clipforge.data.decode import DEFAULT_MAX_PIXELS, SkipCounter
from clipforge.encode.batches import iter_image_batches
from clipforge.encode.device import pick_device
from clipforge.encode.images import ImageInput, open_image
from clipforge.encode.precision import DTYPES, resolve_precision
from clipforge.errors import UsageError
from clipforge.models import load_model
from clipforge.models.families import can_caption
from clipforge.models.generation import generate
from clipforge.models.unwrap import unwrap_model

__all__ = ["Captioner", "DEFAULTS"]

DEFAULTS = {"method": "beam", "max_tokens": 20, "min_tokens": 0, "beams": 4, "top_p": 0.9, "temperature": 1.0}


class Captioner:
    """Captions for images from a model with a caption decoder (`can_caption`)."""

    def __init__(self, model, *, device=None, precision: Optional[str] = None, ref: Optional[str] = None):
        model = unwrap_model(model)
        if not can_caption(model):
            raise UsageError(f"model {ref or type(model).__name__} has no caption decoder: captions need a "
                             "captioning model such as a CoCa (e.g. coca-tiny, coca_ViT-B-32, open_clip's CoCa)")
        if device is not None:
            model = model.to(pick_device(device))
        if precision is not None:
            model.to(DTYPES[resolve_precision(precision, model, model.device)])
        self.model, self.ref = model, ref
        tok = model.tokenizer
        if tok is None or tok.sot_id is None or tok.eot_id is None:
            raise UsageError("captioning needs the model's tokenizer with start and end tokens")
        self.tokenizer = tok

    @classmethod
    def load(cls, ref, *, device=None, precision: str = "auto", seed: int = 0, **load_options) -> "Captioner":
        """Load a model reference (`load_model`) for captioning; a registered name without weights is
        randomly initialised from `seed` (as `Encoder.load`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = load_model(str(ref), **load_options)
        return cls(model, device=pick_device(device), precision=precision, ref=str(ref))

    @property
    def max_tokens_limit(self) -> int:
        """The most caption tokens the text tower's context holds (start token + caption, end token last)."""
        return self.model.config.text.context_length - 1

    def caption_pixels(self, pixels: torch.Tensor, *, method: str = DEFAULTS["method"],
                       max_tokens: int = DEFAULTS["max_tokens"], min_tokens: int = DEFAULTS["min_tokens"],
                       beams: int = DEFAULTS["beams"], top_p: float = DEFAULTS["top_p"],
                       temperature: float = DEFAULTS["temperature"], seed: Optional[int] = None) -> List[str]:
        """(B, 3, H, W) preprocessed pixels -> B captions."""
        if int(max_tokens) > self.max_tokens_limit:
            raise UsageError(f"`max_tokens` {max_tokens} exceeds what this model's {self.max_tokens_limit + 1}-token "
                             f"context holds ({self.max_tokens_limit})")
        if not len(pixels):
            return []
        m, tok = self.model, self.tokenizer
        gen = torch.Generator(device=m.device).manual_seed(seed) if seed is not None else None
        was = m.training
        m.eval()
        try:
            with torch.inference_mode():
                img = m.image_tokens(pixels.to(m.device))
                ids = generate(m, img, sot=tok.sot_id, eot=tok.eot_id, pad=tok.pad_id, method=method,
                               max_tokens=max_tokens, min_tokens=min_tokens, beams=beams, top_p=top_p,
                               temperature=temperature, generator=gen)
        finally:
            m.train(was)
        return [tok.decode(row) for row in ids]

    def caption(self, images: Sequence[ImageInput], batch_size: int = 32, *,
                max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, **options) -> List[str]:
        """Paths, encoded bytes or PIL images -> one caption each, in order (an unusable image raises
        `ImageError` naming it). `options`: those of `caption_pixels`."""
        out: List[str] = []
        for i in range(0, len(images), batch_size):
            px = torch.stack([self.model.preprocess(open_image(im, max_pixels=max_pixels))
                              for im in images[i:i + batch_size]])
            out += self.caption_pixels(px, **options)
        return out

    def caption_source(self, source, batch_size: int = 32, *, batches=None, workers: int = 0,
                       require: Optional[str] = None, skipped: Optional[SkipCounter] = None,
                       progress: Optional[bool] = None, **options) -> Iterator[Tuple[object, List[str]]]:
        """Yield (ImageBatch without pixels, its captions) for every planned batch of a data source; bad images
        (and, with `require` "caption", images without one) are skipped and counted in `skipped`; a custom
        `batches` plan resumes a job where it stopped."""
        for batch in iter_image_batches(source, self.model.preprocess, batch_size, batches=batches, workers=workers,
                                        require=require, skipped=skipped, progress=progress, desc="captions"):
            captions = self.caption_pixels(batch.pixels, **options)
            batch.pixels = None
            yield batch, captions
