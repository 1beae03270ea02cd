"""Zero-shot image<->text retrieval on a captioned source (Flickr30K / COCO protocol).

Every readable image is a key for text->image and a query for image->text; every caption of it is a text
(several per image). Recall@K, mean and median rank come from `clipforge.metrics.retrieval.image_text_recall`, which
scores block by block (never the whole N x M matrix) with the documented tie rule (lower index first).
Images whose file cannot be read are skipped with their captions, and counted.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from clipforge.errors import UsageError

__all__ = ["encode_texts", "evaluate_zeroshot_retrieval"]


@torch.inference_mode()
def encode_texts(model, texts: Sequence[str], batch_size: int = 256, progress: Optional[bool] = None) -> torch.Tensor:
    """L2-normalised float32 text embeddings on CPU.  # (M, D)"""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    try:
        for i in tqdm(range(0, len(texts), batch_size), desc="texts", unit="batch",
                      disable=None if progress is None else not progress):
            ids = model.tokenizer(list(texts[i : i + batch_size])).to(dev)
            out.append(model.encode_text(ids, normalize=True).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)


def evaluate_zeroshot_retrieval(model, source, *, ks: Sequence[int] = (1, 5, 10), batch_size: int = 256,
                                workers: int = 0, progress: Optional[bool] = None, features=None) -> dict:
    """-> {"metrics": {i2t_R@K, i2t_mean_rank, i2t_median_rank, i2t_n, t2i_... }, "num_images",
    "num_texts", "skipped"}. `features`: a precomputed `SourceFeatures` of `source` (optional)."""
    from clipforge.data.sources import open_source
    from clipforge.evaluate.encode import source_features
    from clipforge.metrics.retrieval import image_text_recall

    if isinstance(source, str):
        source = open_source(source)
    feats = features or source_features(model, source, batch_size, workers, progress, desc="retrieval images")
    texts = [c for caps in feats.captions for c in caps]
    t2i = np.repeat(np.arange(len(feats.captions)), [len(c) for c in feats.captions])  # (M,) image of each text
    if len(feats.ids) == 0:
        raise UsageError(f"{source.spec}: no readable images")
    if not texts:
        raise UsageError(f"{source.spec}: the images have no captions; retrieval needs image-text pairs")
    text_emb = encode_texts(model, texts, batch_size, progress)
    metrics = image_text_recall(feats.feats, text_emb, t2i, ks=ks)
    return {"metrics": metrics, "num_images": len(feats.ids), "num_texts": len(texts),
            "skipped": feats.skipped.as_dict()}
