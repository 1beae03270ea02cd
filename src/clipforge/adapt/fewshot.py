"""Few-shot methods by name, each declaring its own options, and the support sets they learn from.

    FEWSHOT.names()    # ['coop', 'gist', 'linear-probe', 'tip-adapter', 'tip-adapter-f', 'zero-shot']
    support = SupportSet.from_features(feats, labels, classnames, val_feats, val_labels)
    head = FEWSHOT.create("tip-adapter", templates="photo").fit(encoder, support, seed=0)
    head.topk(test_feats, k=5); head.save("heads/tip")            # adapt.heads.load_head reads it back

A method is one class in one file registering itself with `@FEWSHOT.register("name")`; `clipforge classify`
with a support set and `clipforge eval` (task few-shot) offer every registered method and its options. Methods
work on frozen, L2-normalised image features (`clipforge.encode`) and the model's text tower (class prompts,
descriptions, or, for CoOp, learned context through the frozen tower). The validation features are for
hyper-parameters only (Tip-Adapter's alpha/beta, the probe's C, ...): no method trains on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.adapt.linear_probe import kshot_indices
from clipforge.errors import UsageError
from clipforge.registry import Option, Registry
from clipforge.zeroshot.head_model import record_model

__all__ = ["FEWSHOT", "FewShotMethod", "SupportSet", "fit_fewshot", "list_fewshot_methods", "sample_support",
           "TEMPLATES", "SCALE"]

FEWSHOT = Registry("few-shot method", param="method")
TEMPLATES = Option("templates", str, help="template set name or file for the class prompts (default: "
                   "openai_imagenet, 80 templates)")
SCALE = 100.0  # CLIP's logit scale, the one Tip-Adapter's and CoOp's formulas are written with


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


class FewShotMethod:
    """Base class: keeps the checked options as attributes; subclasses implement `fit`.

    `uses_support`: False for the zero-shot baseline (its head does not depend on the support set, so a
    protocol fits it once). `needs_model`: the method runs the model's text tower itself (CoOp).
    """

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    uses_support: ClassVar[bool] = True

    def __init__(self, **options):
        for k, v in options.items():
            setattr(self, k, v)

    def fit(self, encoder, support: SupportSet, *, seed: int = 0, progress: Optional[bool] = None):
        """A head for `support.classnames` (`adapt.heads`). `encoder`: a `clipforge.encode.Encoder`."""
        raise NotImplementedError


def list_fewshot_methods() -> list[str]:
    return FEWSHOT.names()


def fit_fewshot(method: str, encoder, support: SupportSet, *, seed: int = 0, progress: Optional[bool] = None,
                **options):
    """Fit registered method `method` (options checked against its declaration) on `support`. The head records
    `encoder`'s model (`zeroshot.head_model`), so a saved head is refused on another model."""
    head = FEWSHOT.create(method, **options).fit(encoder, support, seed=seed, progress=progress)
    record_model(head, encoder)
    return head
