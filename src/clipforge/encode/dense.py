"""Dense encoding: per-cell image features and Grad-CAM maps through an `Encoder`'s torch engine.

    feats = enc.encode_dense(["cat.jpg"], size=224)             # (1, 7, 7, D) float32, cells L2-normalised
    cams = enc.gradcam_maps(["cat.jpg"], enc.encode_texts(["a cat"]))   # (1, 1, h, w) float32

Images are squashed to `size` x `size` (never cropped: every cell maps back onto the whole image) with the
model's eval normalisation; `size` defaults to `models.dense.default_dense_size`. The exported engines (onnx,
openvino) run graphs of the pooled embedding only, so dense features need the torch engine: anything else is
refused in one line. Calls run like the torch engine's own: the model in eval mode (its mode restored after),
on the engine's device and threads; features without autograd, Grad-CAM with it (from the last spatial layer
up; no weight gets a gradient).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch

from clipforge.data.decode import DEFAULT_MAX_PIXELS
from clipforge.encode.images import ImageInput, open_image
from clipforge.encode.torch_engine import TorchEngine
from clipforge.errors import UsageError
from clipforge.models.dense import default_dense_size, dense_features, dense_transform, gradcam_maps

__all__ = ["encode_dense", "encode_gradcam", "dense_pixels"]


def _torch_engine(encoder) -> TorchEngine:
    engine = encoder.engine
    if not isinstance(engine, TorchEngine):
        raise UsageError(f"dense features and maps need `engine` torch; {engine.name} runs an exported graph of "
                         "the pooled embedding only")
    return engine


@contextlib.contextmanager
def _eval_call(engine: TorchEngine):
    model, threads = engine.model, torch.get_num_threads()
    was_training = model.training
    model.eval()
    if engine.threads is not None:
        torch.set_num_threads(engine.threads)
    try:
        yield model
    finally:
        model.train(was_training)
        if engine.threads is not None:
            torch.set_num_threads(threads)


def dense_pixels(encoder, images: Sequence[ImageInput], size: Optional[int] = None, *,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Paths, bytes or PIL images -> (N, 3, size, size) pixels as the dense calls read them."""
    model = encoder.model
    transform = dense_transform(model, size or default_dense_size(model))
    return torch.stack([transform(open_image(im, max_pixels=max_pixels)) for im in images])


def _batched(encoder, images, size, batch_size, max_pixels, fn) -> torch.Tensor:
    if batch_size < 1:
        raise UsageError(f"`batch_size` must be >= 1, got {batch_size}")
    engine = _torch_engine(encoder)
    out = []
    with _eval_call(engine) as model:
        for i in range(0, len(images), batch_size):
            px = dense_pixels(encoder, images[i:i + batch_size], size, max_pixels=max_pixels)
            out.append(fn(model, px.to(engine.device)).float().cpu())
    if not out:
        raise UsageError("no images given")
    return torch.cat(out)


def encode_dense(encoder, images: Sequence[ImageInput], *, method: str = "auto", size: Optional[int] = None,
                 normalize: bool = True, batch_size: int = 16,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Images -> (N, H', W', D) float32 joint-space features (`models.dense.dense_features`, `method` auto |
    maskclip | tokens), each cell L2-normalised unless `normalize=False`."""
    def run(model, px):
        with torch.inference_mode():
            return dense_features(model, px, method, normalize)

    return _batched(encoder, list(images), size, batch_size, max_pixels, run)


def encode_gradcam(encoder, images: Sequence[ImageInput], text_feats: torch.Tensor, *,
                   size: Optional[int] = None, batch_size: int = 8,
                   max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Images and (T, D) text embeddings -> (N, T, h, w) float32 Grad-CAM maps of the pooled cosine
    (`models.dense.gradcam_maps`)."""
    text_feats = torch.as_tensor(text_feats)
    if text_feats.ndim != 2 or text_feats.shape[1] != encoder.embed_dim:
        raise UsageError(f"`text_feats` must be (T, {encoder.embed_dim}), got {tuple(text_feats.shape)}")
    return _batched(encoder, list(images), size, batch_size, max_pixels,
                    lambda model, px: gradcam_maps(model, px, text_feats))
