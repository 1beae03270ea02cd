"""clipforge.adapt: few-shot adaptation on frozen features — a method registry (`FEWSHOT`: zero-shot and
linear-probe baselines, Tip-Adapter, Tip-Adapter-F, CoOp, GIST), their heads (saved and loaded like zero-shot
heads), the k-shot sampling every method shares, and the CLIP-protocol linear probe. Parameter-efficient
fine-tuning of the model itself (LoRA, Comp-LoRA) lives in `clipforge.models.lora` (adapters are a kind of
model reference) and trains through `clipforge.train` (`adapt:` config section).

Importing the package registers the built-in methods (one module each).
"""
from clipforge.adapt import coop, gist, probe_method, tip_adapter, tip_adapter_f, zeroshot_baseline  # noqa: F401
from clipforge.adapt.fewshot import (FEWSHOT, FewShotMethod, SupportSet, fit_fewshot, list_fewshot_methods,
                                     sample_support)
from clipforge.adapt.heads import LinearHead, TipAdapterHead, load_head

__all__ = ["FEWSHOT", "FewShotMethod", "SupportSet", "fit_fewshot", "list_fewshot_methods", "sample_support",
           "LinearHead", "TipAdapterHead", "load_head"]
