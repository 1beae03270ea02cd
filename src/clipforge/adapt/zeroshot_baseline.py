"""The zero-shot baseline of the few-shot protocol: the class-prompt ensemble, ignoring the support set."""
from __future__ import annotations

from clipforge.adapt.fewshot_heads import LinearHead
from clipforge.adapt.fewshot_method import FEWSHOT, SCALE, TEMPLATES, FewShotMethod
from clipforge.zeroshot.zeroshot_head import build_classifier, model_text_encoder

__all__ = ["ZeroShotBaseline", "zeroshot_weights"]


def zeroshot_weights(encoder, classnames, templates=None, progress=None):
    """(C, D) normalised class vectors of the template ensemble (the `mean` zero-shot method)."""
    return build_classifier(model_text_encoder(encoder), classnames, templates, progress=progress).weights


@FEWSHOT.register("zero-shot")
class ZeroShotBaseline(FewShotMethod):
    """Zero-shot prompt ensemble (no training; the flat line of the accuracy-vs-shots plot)."""

    options = (TEMPLATES,)
    uses_support = False

    def fit(self, encoder, support, *, seed=0, progress=None):
        w = zeroshot_weights(encoder, support.classnames, self.templates, progress)
        return LinearHead(w, support.classnames, SCALE, meta={"method": self.name, "templates": self.templates})
