"""clipforge.zeroshot: prompt templates, zero-shot heads (mean, CuPL, ZPE), description scoring, DisCLIP."""
from clipforge.zeroshot.classifier import ZeroShotHead, build_classifier, model_text_encoder
from clipforge.zeroshot.templates import get_templates, list_template_sets, load_template_file, templates_hash
from clipforge.zeroshot.zpe import build_zpe_classifier, zpe_weights

__all__ = [
    "ZeroShotHead", "build_classifier", "model_text_encoder", "get_templates", "list_template_sets",
    "load_template_file", "templates_hash", "build_zpe_classifier", "zpe_weights",
]
