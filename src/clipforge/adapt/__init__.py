"""clipforge.adapt: few-shot adaptation on frozen features — a method registry (`FEWSHOT`: zero-shot and
linear-probe baselines, Tip-Adapter, Tip-Adapter-F, CoOp, GIST), their heads (saved and loaded like zero-shot
heads, `fewshot_heads`), the support sets and k-shot sampling every method shares (`support`), and the
CLIP-protocol linear-probe solver (`linear_probe_solver`; its few-shot method: `linear_probe_method`).
Parameter-efficient fine-tuning of the model itself (LoRA, Comp-LoRA) lives in `clipforge.models.lora`
(adapters are a kind of model reference) and trains through `clipforge.train` (`adapt:` config section).

Importing the package registers the built-in methods (one module each).
"""
from clipforge.adapt import (coop, gist, linear_probe_method, tip_adapter, tip_adapter_f,  # noqa: F401
                             zeroshot_baseline)
from clipforge.adapt.fewshot_heads import LinearHead, TipAdapterHead, load_head
from clipforge.adapt.fewshot_method import FEWSHOT, FewShotMethod, fit_fewshot, list_fewshot_methods
from clipforge.adapt.support import SupportSet, sample_support

__all__ = ["FEWSHOT", "FewShotMethod", "SupportSet", "fit_fewshot", "list_fewshot_methods", "sample_support",
           "LinearHead", "TipAdapterHead", "load_head"]
