"""Embed texts and images with any model honouring the contract (batched, no grad, eval mode)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


@torch.inference_mode()
def embed_texts(model, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> np.ndarray:
    """(N, D) float32 text embeddings."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids = model.tokenizer(list(texts[i:i + batch_size])).to(model.device)
        out.append(model.encode_text(ids, normalize=normalize).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.embed_dim), np.float32)


def open_image(path) -> Image.Image:
    """Decode an image file to RGB with EXIF orientation applied, through the data layer's safe decoder
    (regular files only: a FIFO cannot block; pixel-bomb limit). Raises `BadSample` on unreadable files."""
    from clipforge.data.decode import decode_image, read_bytes

    return decode_image(read_bytes(path))


@torch.inference_mode()
def embed_images(model, paths: Sequence, batch_size: int = 64, normalize: bool = True
                 ) -> Tuple[np.ndarray, Dict[str, str]]:
    """(N_good, D) image embeddings for the files that decode, and {path: reason} for those that do not."""
    good: List[torch.Tensor] = []
    bad: Dict[str, str] = {}
    from clipforge.data.decode import BadSample

    for p in paths:
        try:
            good.append(model.preprocess(open_image(p)))
        except BadSample as e:
            bad[str(p)] = e.reason
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            bad[str(p)] = f"unreadable image ({type(e).__name__})"
    out = []
    for i in range(0, len(good), batch_size):
        px = torch.stack(good[i:i + batch_size]).to(model.device)
        out.append(model.encode_image(px, normalize=normalize).float().cpu())
    vecs = torch.cat(out).numpy() if out else np.zeros((0, model.config.embed_dim), np.float32)
    return vecs, bad
