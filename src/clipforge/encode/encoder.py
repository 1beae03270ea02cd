"""`Encoder`: batched text and image encoding through one engine, for every caller.

    enc = Encoder.load("ckpt/final", precision="auto")      # or Encoder.from_model(model), as_encoder(model)
    txt = enc.encode_texts(["a cat", "a dog"])               # (2, D) float32, L2-normalised
    img = enc.encode_images(["cat.jpg", pil_image, raw_bytes])
    feats = enc.encode_source(open_source("folder:photos"), workers=2)   # SourceFeatures: feats, ids, ...
    for batch in enc.iter_source(src, batch_size=256):       # streaming: ImageBatch with .feats (B, D)
        ...

Every result is a float32 CPU tensor (rows L2-normalised unless `normalize=False`), with the ids, captions,
labels and metadata of the rows that were encoded and the skips by reason, so callers never re-associate
rows themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from clipforge.data.decode import DEFAULT_MAX_PIXELS, SkipCounter
from clipforge.encode.device import pick_device
from clipforge.encode.batches import ImageBatch, iter_image_batches
from clipforge.encode.dense import encode_dense, encode_gradcam
from clipforge.encode.engine import Engine, create_engine
from clipforge.encode.images import ImageInput, open_image
from clipforge.models import load_model
from clipforge.progress import Progress

__all__ = ["Encoder", "SourceFeatures", "as_encoder"]


@dataclass
class SourceFeatures:
    """Every readable image of a source, encoded: row i of `feats` is sample `ids[i]`."""

    feats: torch.Tensor  # (N, D) float32
    ids: list[str]
    captions: list[list[str]]
    labels: list[Optional[int]]
    meta: list[dict] = field(default_factory=list)
    skipped: SkipCounter = field(default_factory=SkipCounter)

    def label_tensor(self) -> torch.Tensor:
        """(N,) long labels, -1 where a sample has none."""
        return torch.tensor([-1 if y is None else int(y) for y in self.labels], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)


class Encoder:
    """Batched encoding through an `Engine` (see `engine.py`)."""

    def __init__(self, engine: Engine, ref: Optional[str] = None):
        self.engine = engine
        self.ref = ref  # the model reference it was loaded from, when known (what records and messages name)

    # -- construction --
    @classmethod
    def from_model(cls, model, *, engine: str = "torch", device=None, precision: Optional[str] = None,
                   ref: Optional[str] = None, **engine_options) -> "Encoder":
        """Wrap a loaded model. device / precision None keep the model as it is (see `TorchEngine`). `ref`: the
        reference it was loaded from, if known (a saved head records it)."""
        return cls(create_engine(engine, model, device=device, precision=precision, **engine_options), ref=ref)

    @classmethod
    def load(cls, ref, *, engine: str = "torch", device=None, precision: str = "auto", seed: int = 0,
             threads: Optional[int] = None, token_merge=None, merge_method: Optional[str] = None,
             **load_options) -> "Encoder":
        """Load a model reference (`load_model`) for inference: on `device` (default: CUDA when available),
        in `precision` ("auto" picks per machine and model), run by `engine` (torch | onnx | openvino | auto)
        with `threads` intra-op threads (default: all cores; auto measures). `token_merge` (torch engine, ViT
        image towers): tokens merged per block, or per-block counts, by `merge_method` tome | pitome
        (`models.token_merge`: faster, approximate; 0 or None exact).

        A registered architecture name without weights is randomly initialised from a fixed `seed`, so every
        process that loads the same reference gets the same weights: a resumed index build or a query must
        embed exactly like the job that wrote the index.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = load_model(str(ref), **load_options)
        return cls.from_model(model, engine=engine, device=pick_device(device), precision=precision,
                              threads=threads, ref=str(ref), token_merge=token_merge, merge_method=merge_method)

    # -- what the engine carries --
    @property
    def model(self):
        return self.engine.model

    @property
    def embed_dim(self) -> int:
        return self.engine.embed_dim

    @property
    def precision(self) -> str:
        return self.engine.precision

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def preprocess(self):
        return self.engine.preprocess

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def _empty(self) -> torch.Tensor:
        return torch.zeros(0, self.embed_dim)

    # -- texts --
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, *, normalize: bool = True,
                     progress: Optional[bool] = False, desc: str = "texts",
                     truncate: Optional[str] = None) -> torch.Tensor:
        """Texts -> (N, D) float32. Texts over the context length are cut by the tokenizer, which warns once
        (`truncate`: "warn", "silent" or "error", default the tokenizer's own policy)."""
        texts = list(texts)
        out = []
        with Progress(len(texts), desc=desc, unit="text", progress=progress) as bar:
            for i in range(0, len(texts), batch_size):
                chunk = texts[i:i + batch_size]
                out.append(self.engine.encode_tokens(self._tokens(chunk, truncate), normalize=normalize))
                bar.update(len(chunk))
        return torch.cat(out) if out else self._empty()

    def _tokens(self, texts: list, truncate: Optional[str]) -> torch.Tensor:
        if truncate is None or not hasattr(self.tokenizer, "truncate"):  # a plain callable has no policy
            return self.tokenizer(texts)
        return self.tokenizer(texts, truncate=truncate)

    # -- images given one by one --
    def encode_pixels(self, pixels: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, D) float32."""
        return self.engine.encode_pixels(pixels, normalize=normalize) if len(pixels) else self._empty()

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 64, *, normalize: bool = True,
                      max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """Paths, encoded bytes or PIL images -> (N, D) float32, in order. An unusable image raises
        `ImageError` naming it (use `encode_source` on a `FileListSource` to skip and count bad files)."""
        out = []
        for i in range(0, len(images), batch_size):
            px = torch.stack([self.preprocess(open_image(im, max_pixels=max_pixels))
                              for im in images[i:i + batch_size]])
            out.append(self.encode_pixels(px, normalize=normalize))
        return torch.cat(out) if out else self._empty()

    # -- where in an image (encode/dense.py; torch engine) --
    def encode_dense(self, images: Sequence[ImageInput], *, method: str = "auto", size: Optional[int] = None,
                     normalize: bool = True, batch_size: int = 16) -> torch.Tensor:
        """Images -> (N, H', W', D) float32 per-cell joint-space features (`method` auto | maskclip | tokens;
        images squashed to `size` px, default `models.dense.default_dense_size`)."""
        return encode_dense(self, images, method=method, size=size, normalize=normalize, batch_size=batch_size)

    def gradcam_maps(self, images: Sequence[ImageInput], text_feats: torch.Tensor, *,
                     size: Optional[int] = None) -> torch.Tensor:
        """Images and (T, D) text embeddings -> (N, T, h, w) Grad-CAM maps of the pooled cosine."""
        return encode_gradcam(self, images, text_feats, size=size)

    # -- collections --
    def iter_source(self, source, batch_size: int = 256, *, batches=None, workers: int = 0,
                    require: Optional[str] = None, skipped: Optional[SkipCounter] = None,
                    progress: Optional[bool] = None, desc: str = "images", normalize: bool = True,
                    worker_init_fn=None, inspect=None, captions: bool = False,
                    transform=None) -> Iterator[ImageBatch]:
        """Yield every planned batch of `source` with `feats` (B, D) set and the pixels released.

        Options are those of `clipforge.encode.batches.iter_image_batches` (a custom `batches` plan,
        decoding `workers`, `require` a label or caption, a `skipped` counter to fill, an `inspect` hook whose
        facts about each decoded image land in `batch.info`). `captions`: also set `text_feats` (B, D), the
        embedding of each row's first caption (a zero row where it has none), so a pair job gets both towers'
        output for the same rows in one pass. `transform` replaces the model's eval preprocessing; one that
        returns V views per image gives feats (B, V, D).
        """
        for batch in iter_image_batches(source, transform or self.preprocess, batch_size, batches=batches,
                                        workers=workers, require=require, skipped=skipped, progress=progress,
                                        desc=desc, worker_init_fn=worker_init_fn, inspect=inspect):
            px = batch.pixels
            if px.dim() == 5:  # (B, V, 3, H, W): every view of every image in one pass
                batch.feats = self.encode_pixels(px.flatten(0, 1), normalize=normalize).view(
                    px.shape[0], px.shape[1], -1)
            else:
                batch.feats = self.encode_pixels(px, normalize=normalize)
            batch.pixels = None
            if captions:
                batch.text_feats = self.encode_first_captions(batch.captions, normalize=normalize)
            yield batch

    def encode_first_captions(self, captions: Sequence[Sequence[str]], *, normalize: bool = True) -> torch.Tensor:
        """Each row's first caption -> (N, D) float32; rows without a caption (or with an empty one) get zeros."""
        first = [c[0] if c else "" for c in captions]
        out = torch.zeros(len(first), self.embed_dim)
        has = [i for i, c in enumerate(first) if c]
        if has:
            out[has] = self.encode_texts([first[i] for i in has], normalize=normalize)
        return out

    def encode_source(self, source, batch_size: int = 256, *, workers: int = 0, require: Optional[str] = None,
                      progress: Optional[bool] = None, desc: str = "images",
                      normalize: bool = True) -> SourceFeatures:
        """Every readable image of `source` at once, with ids, captions, labels, metadata and skips."""
        skipped = SkipCounter()
        feats, ids, caps, labels, meta = [], [], [], [], []
        for b in self.iter_source(source, batch_size, workers=workers, require=require, skipped=skipped,
                                  progress=progress, desc=desc, normalize=normalize):
            feats.append(b.feats)
            ids += b.ids
            caps += b.captions
            labels += b.labels
            meta += b.meta
        return SourceFeatures(torch.cat(feats) if feats else self._empty(), ids, caps, labels, meta, skipped)


def as_encoder(model_or_encoder) -> Encoder:
    """An `Encoder` as given, or one wrapping a loaded model as it is (its device and dtype unchanged)."""
    if isinstance(model_or_encoder, Encoder):
        return model_or_encoder
    return Encoder.from_model(model_or_encoder)
