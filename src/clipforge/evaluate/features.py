"""Frozen image features for a labelled source, computed once (zero-shot, linear probe, retrieval)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from clipforge.data.decode import SkipCounter


@dataclass
class Features:
    feats: torch.Tensor  # (N, D) float32, L2-normalised
    labels: torch.Tensor  # (N,) long, -1 where unknown
    ids: List[str]
    skipped: SkipCounter = field(default_factory=SkipCounter)


@torch.inference_mode()
def labelled_image_features(model, source, *, batch_size: int = 256, workers: int = 0,
                            progress: Optional[bool] = None, desc: str = "features") -> Features:
    """Encode every readable image of a labelled source with the model's eval preprocessing."""
    from clipforge.data.loader import make_labelled_loader

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    feats, labels, ids = [], [], []
    loader = make_labelled_loader(source, model.preprocess, batch_size, workers=workers)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=None if progress is None else not progress):
        if batch["pixels"].numel() == 0:
            continue
        feats.append(model.encode_image(batch["pixels"].to(dev), normalize=True).float().cpu())
        labels.append(batch["labels"])
        ids += batch["ids"]
    model.train(was_training)
    dim = model.config.embed_dim
    return Features(torch.cat(feats) if feats else torch.zeros(0, dim),
                    torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long), ids, loader.skipped)
