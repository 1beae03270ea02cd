"""Zero-shot classification on the served index's model: one image, the labels a user typed, probabilities.

The head is the zero-shot "mean" method of `clipforge classify` (`clipforge.zeroshot`): each label's vector
is the normalised mean of its template prompts' embeddings, and probabilities are the softmax of
100 * cosine over the labels, so the page shows what the command line would print. Heads are kept in a small
LRU cache by (labels, template set): a user trying one image after another pays the prompt encoding once.
Template sets are named sets only (`clipforge.zeroshot.templates`): a request never names a file.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Optional, Sequence

import torch

from clipforge.errors import UsageError
from clipforge.zeroshot.zeroshot_head import ZeroShotHead, build_classifier
from clipforge.zeroshot.templates import TEMPLATE_SETS, get_templates

__all__ = ["ClassifyService", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES = "openai_imagenet"  # what `clipforge classify` uses when no template set is given


class ClassifyService:
    """Probabilities of labels for images, on a `IndexSearcher`'s model (its lock, its precision)."""

    def __init__(self, searcher, heads: int = 64):
        self.searcher, self.max_heads = searcher, heads
        self._heads: OrderedDict[tuple, ZeroShotHead] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def template_sets() -> list[str]:
        return sorted(TEMPLATE_SETS)

    def head(self, labels: Sequence[str], templates: Optional[str] = None) -> ZeroShotHead:
        labels = [str(x).strip() for x in labels]
        if len(set(labels)) != len(labels):
            dup = next(x for x in labels if labels.count(x) > 1)
            raise UsageError(f"labels must be different from each other ({dup!r} is given twice)")
        name = templates or DEFAULT_TEMPLATES
        if name not in TEMPLATE_SETS:
            raise UsageError(f"`templates` {name!r} is not a template set; choose from {', '.join(self.template_sets())}")
        key = (tuple(labels), name, self.searcher.model_key)
        with self._lock:
            head = self._heads.get(key)
            if head is not None:
                self._heads.move_to_end(key)
                return head
        head = build_classifier(self.searcher.encode_text_uncached, labels, get_templates(name), progress=False)
        with self._lock:
            self._heads[key] = head
            while len(self._heads) > self.max_heads:
                self._heads.popitem(last=False)
        return head

    def classify(self, image, labels: Sequence[str], templates: Optional[str] = None) -> dict:
        """image: a path, bytes or PIL image -> {"labels": best first, "probabilities", "templates",
        "prompts_per_label", "took_ms"}."""
        t0 = time.perf_counter()
        head = self.head(labels, templates)
        feats = torch.from_numpy(self.searcher.encode_image([image]))  # (1, D)
        probs = head.probs(feats)[0]  # (C,)
        order = torch.argsort(probs, descending=True, stable=True).tolist()
        name = templates or DEFAULT_TEMPLATES
        return {"labels": [head.classnames[i] for i in order],
                "probabilities": [round(float(probs[i]), 6) for i in order],
                "templates": name, "prompts_per_label": len(get_templates(name)),
                "took_ms": round((time.perf_counter() - t0) * 1e3, 3)}
