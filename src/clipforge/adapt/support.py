"""Support sets: the labelled features a few-shot method learns from, and the k-shot split that draws them.

    support_idx, val_idx = sample_support(labels, k=4, seed=0, val_shots=4)
    support = SupportSet.from_features(feats[support_idx], labels[support_idx], classnames,
                                       feats[val_idx], labels[val_idx])

The validation features are for hyper-parameters only (Tip-Adapter's alpha/beta, the probe's C, ...): no
method trains on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.adapt.linear_probe_solver import kshot_indices
from clipforge.errors import UsageError

__all__ = ["SupportSet", "sample_support"]


@dataclass
class SupportSet:
    """Labelled features to learn from (`feats` (N, D), `labels` (N,) in 0..C-1) and to choose settings on
    (`val_feats`, `val_labels`; may be empty)."""

    feats: torch.Tensor
    labels: torch.Tensor
    classnames: list
    val_feats: torch.Tensor
    val_labels: torch.Tensor

    @classmethod
    def from_features(cls, feats, labels, classnames: Sequence[str], val_feats=None, val_labels=None) -> "SupportSet":
        feats = F.normalize(torch.as_tensor(feats).float(), dim=-1)
        labels = torch.as_tensor(labels).long()
        c = len(classnames)
        if len(feats) != len(labels) or len(feats) == 0:
            raise UsageError(f"the support set needs as many labels as features (> 0), got {len(feats)} and "
                             f"{len(labels)}")
        if labels.min() < 0 or labels.max() >= c:
            raise UsageError(f"support labels must be in 0..{c - 1} (one per class name)")
        if val_feats is None or len(val_feats) == 0:
            vf, vl = torch.zeros(0, feats.shape[1]), torch.zeros(0, dtype=torch.long)
        else:
            vf, vl = F.normalize(torch.as_tensor(val_feats).float(), dim=-1), torch.as_tensor(val_labels).long()
        return cls(feats, labels, [str(n) for n in classnames], vf, vl)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def onehot(self) -> torch.Tensor:
        return F.one_hot(self.labels, self.num_classes).float()  # (N, C)

    def selection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels to choose settings on: the validation set, else the support set itself."""
        return (self.val_feats, self.val_labels) if len(self.val_labels) else (self.feats, self.labels)


def sample_support(labels, k: int, seed: int, val_shots: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(support indices: k per class, validation indices: `val_shots` per class from the rest), both sorted.
    The same (labels, k, seed, val_shots) always gives the same split, whatever method uses it."""
    labels = np.asarray(labels).ravel()
    support = kshot_indices(labels, k, seed)
    if val_shots <= 0:
        return support, np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), support)
    val = rest[kshot_indices(labels[rest], val_shots, seed + 7919)]
    return support, np.sort(val)
