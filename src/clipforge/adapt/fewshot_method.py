"""Few-shot methods by name, each declaring its own options (support sets: `adapt.support`).

    FEWSHOT.names()    # ['coop', 'gist', 'linear-probe', 'tip-adapter', 'tip-adapter-f', 'zero-shot']
    head = FEWSHOT.create("tip-adapter", templates="photo").fit(encoder, support, seed=0)
    head.topk(test_feats, k=5); head.save("heads/tip")    # adapt.fewshot_heads.load_head reads it back

A method is one class in one file registering itself with `@FEWSHOT.register("name")`; `clipforge classify`
with a support set and `clipforge eval` (task few-shot) offer every registered method and its options. Methods
work on frozen, L2-normalised image features (`clipforge.encode`) and the model's text tower (class prompts,
descriptions, or, for CoOp, learned context through the frozen tower).
"""
from __future__ import annotations

from typing import ClassVar, Optional

from clipforge.adapt.support import SupportSet
from clipforge.registry import Option, Registry
from clipforge.zeroshot.head_model import record_model

__all__ = ["FEWSHOT", "FewShotMethod", "fit_fewshot", "list_fewshot_methods", "TEMPLATES", "SCALE"]

FEWSHOT = Registry("few-shot method", param="method")
TEMPLATES = Option("templates", str, help="template set name or file for the class prompts (default: "
                   "openai_imagenet, 80 templates)")
SCALE = 100.0  # CLIP's logit scale, the one Tip-Adapter's and CoOp's formulas are written with


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
        """A head for `support.classnames` (`adapt.fewshot_heads`). `encoder`: a `clipforge.encode.Encoder`."""
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
