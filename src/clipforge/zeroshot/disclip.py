"""DisCLIP-style description selection among the top candidate classes (training-free).

For each image: take the `top` (default 3) candidate classes from the plain zero-shot scores. For each
candidate class c, keep only the descriptions d of c that are discriminative against the other candidates:
mean sim(d, reference images of c) > mean sim(d, reference images of c') for every other candidate c'.
Each candidate is then rescored as
    score_c = w * sim(image, class prompt vector c) + mean over selected d of sim(image, d)
and the prediction is the best-scoring candidate.

Reference images: per class, features of a few images known to show it (e.g. few-shot examples or
confidently pseudo-labelled test images). Without them, the class prompt vector itself stands in as the
only "reference image" (fully text-only); this fallback is our choice, not from the paper.
When no description of c survives the selection, all of c's descriptions are used (so every candidate's
score has the same two terms); a class with no descriptions uses its class prompt vector as its one
description. Selections are cached per (class, candidate set).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from clipforge.errors import UsageError
from clipforge.registry import Option
from clipforge.zeroshot.cupl import load_descriptions, match_descriptions
from clipforge.zeroshot.zeroshot_head import EncodeText, build_classifier, encode_normalized, model_text_encoder
from clipforge.zeroshot.methods import DESCRIPTIONS, METHODS, TEMPLATES, ZeroShotMethod

__all__ = ["DisclipClassifier", "DisclipMethod"]


@dataclass
class DisclipClassifier:
    class_emb: torch.Tensor  # (C, D) normalised class prompt vectors (e.g. a ZeroShotHead's weights)
    desc_emb: list[torch.Tensor]  # per class (n_c, D) normalised description embeddings
    classnames: list[str]
    reference_feats: list[torch.Tensor] | None = None  # per class (R_c, D) image features, or None
    w: float = 1.0
    top: int = 3
    _cache: dict = field(default_factory=dict, repr=False)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        c = len(self.classnames)
        if self.class_emb.shape[0] != c or len(self.desc_emb) != c:
            raise UsageError(f"need one class vector and one description set per class ({c} classes)")
        if self.reference_feats is not None and len(self.reference_feats) != c:
            raise UsageError(f"reference_feats must have one entry per class ({c}), got {len(self.reference_feats)}")
        self.desc_emb = [d if len(d) else self.class_emb[i : i + 1] for i, d in enumerate(self.desc_emb)]

    @classmethod
    def build(
        cls, encode_text: EncodeText, class_emb: torch.Tensor, classnames: Sequence[str], descriptions,
        reference_feats=None, w: float = 1.0, top: int = 3, batch_size: int = 1024, progress=None,
    ) -> "DisclipClassifier":
        desc = descriptions if isinstance(descriptions, dict) else load_descriptions(descriptions)
        per_class = match_descriptions(list(classnames), desc)
        flat = [d for ds in per_class for d in ds]
        emb = encode_normalized(encode_text, flat, batch_size, progress) if flat else torch.zeros(0, class_emb.shape[1])
        sizes = [len(ds) for ds in per_class]
        refs = None if reference_feats is None else [
            None if r is None else F.normalize(torch.as_tensor(r).float(), dim=-1) for r in reference_feats]
        class_emb = F.normalize(class_emb.float(), dim=-1)
        return cls(class_emb, list(torch.split(emb, sizes)), list(classnames), refs, w, top)

    def _refs(self, c: int) -> torch.Tensor:
        r = None if self.reference_feats is None else self.reference_feats[c]
        return self.class_emb[c : c + 1] if r is None or len(r) == 0 else r

    def selected(self, c: int, candidates: Sequence[int]) -> torch.Tensor:
        """Indices into class c's descriptions kept against the other candidates."""
        others = tuple(sorted(int(o) for o in candidates if int(o) != c))
        key = (c, others)
        if key not in self._cache:
            d = self.desc_emb[c]  # (n_c, D)
            own = (d @ self._refs(c).T).mean(1)  # (n_c,)
            keep = torch.ones(len(d), dtype=torch.bool)
            for o in others:
                keep &= own > (d @ self._refs(o).T).mean(1)
            self._cache[key] = keep.nonzero().flatten() if keep.any() else torch.arange(len(d))
        return self._cache[key]

    def predict(self, image_feats) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (predicted class (N,), candidates (N, top) by plain score, rescored candidates (N, top))."""
        f = F.normalize(torch.as_tensor(image_feats).float(), dim=-1)  # (N, D)
        base = f @ self.class_emb.T  # (N, C)
        top = min(self.top, len(self.classnames))
        cand = base.topk(top, dim=-1).indices  # (N, top)
        rescored = torch.empty(len(f), top)
        for n in range(len(f)):
            for j, c in enumerate(cand[n].tolist()):
                d = self.desc_emb[c][self.selected(c, cand[n].tolist())]  # (k, D)
                rescored[n, j] = self.w * base[n, c] + (d @ f[n]).mean()
        pred = cand.gather(1, rescored.argmax(1, keepdim=True)).squeeze(1)
        return pred, cand, rescored

    def topk(self, image_feats, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """(rescored values, class indices), each (N, min(k, top)): only the candidate classes are ranked."""
        _, cand, rescored = self.predict(image_feats)  # (N, top) each
        order = rescored.argsort(dim=1, descending=True, stable=True)[:, :k]
        return rescored.gather(1, order), cand.gather(1, order)

    def scores(self, image_feats) -> torch.Tensor:
        """(N, C): the candidates by their rescored value, every other class below them by its plain score."""
        f = F.normalize(torch.as_tensor(image_feats).float(), dim=-1)
        base = f @ self.class_emb.T  # (N, C), cosines in [-1, 1]
        _, cand, rescored = self.predict(f)
        # shift the non-candidates so the best of them stays below the worst candidate of its row
        offset = (rescored.min(1, keepdim=True).values - base.max(1, keepdim=True).values - 1.0)  # (N, 1)
        return (base + offset).scatter(1, cand, rescored)


@METHODS.register("disclip")
class DisclipMethod(ZeroShotMethod):
    """DisCLIP-style rescoring of the top candidate classes with the descriptions that tell them apart."""

    options = (TEMPLATES, DESCRIPTIONS,
               Option("disclip_top", int, 3, help="disclip: candidate classes rescored per image"))
    score_kind = "rescored similarity (candidate classes only)"

    def build(self, encoder, classnames, *, test_features=None, batch_size=256, workers=0, progress=None):
        encode = model_text_encoder(encoder, batch_size)
        base = build_classifier(encode, classnames, self.templates, progress=progress)
        clf = DisclipClassifier.build(encode, base.weights, classnames, self.descriptions, top=self.disclip_top,
                                      progress=progress)
        clf.meta = {"method": "disclip", "top": self.disclip_top, **base.meta}
        return clf
