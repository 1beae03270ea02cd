"""clipforge.encode: the one place images and texts are batched through a model.

One device policy (`pick_device`), one precision policy (`resolve_precision`: fp32 / bf16 / fp16 / auto),
one image opener (`open_image`, through the safe decoder), batched image encoding from any data-layer source
(`Encoder.iter_source` / `encode_source`: decoding workers, skips counted by reason, ids / labels / captions
kept), batched text encoding (`Encoder.encode_texts`; `TextEmbeddingCache` for services: an LRU cache plus
micro-batches of concurrent callers' texts), and the engine seam (`ENGINES`: "torch" today).
"""
from clipforge.encode import torch_engine  # noqa: F401  (registers the "torch" engine)
from clipforge.encode.batches import ImageBatch, iter_image_batches, plan_batches
from clipforge.encode.device import pick_device
from clipforge.encode.encoder import Encoder, SourceFeatures, as_encoder
from clipforge.encode.engine import ENGINES, Engine, create_engine, list_engines
from clipforge.encode.images import ImageError, open_image
from clipforge.encode.precision import PRECISIONS, cpu_has_native_bf16, resolve_precision
from clipforge.encode.text_cache import TextEmbeddingCache

__all__ = ["Encoder", "SourceFeatures", "as_encoder", "ImageBatch", "iter_image_batches", "plan_batches",
           "pick_device", "ENGINES", "Engine", "create_engine", "list_engines", "ImageError", "open_image",
           "PRECISIONS", "cpu_has_native_bf16", "resolve_precision", "TextEmbeddingCache"]
