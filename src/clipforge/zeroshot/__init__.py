"""clipforge.zeroshot: prompt templates, class names, and zero-shot methods by name (mean, CuPL, ZPE,
description scoring, DisCLIP), each declaring its own options; `classify` labels images with any of them.

Importing the package registers the built-in methods (one module each) in `METHODS`.
"""
from clipforge.zeroshot import describe, disclip, zpe  # noqa: F401  (register their methods)
from clipforge.zeroshot.classnames import read_labels, resolve_classnames
from clipforge.zeroshot.zeroshot_head import ZeroShotHead, build_classifier, model_text_encoder
from clipforge.zeroshot.methods import METHODS, ZeroShotMethod, create_method, list_methods
from clipforge.zeroshot.predict import Classification, Prediction, classify, prediction_output, write_predictions
from clipforge.zeroshot.templates import get_templates, list_template_sets, load_template_file, templates_hash
from clipforge.zeroshot.zpe import build_zpe_classifier, zpe_weights

__all__ = [
    "ZeroShotHead", "build_classifier", "model_text_encoder", "get_templates", "list_template_sets",
    "load_template_file", "templates_hash", "build_zpe_classifier", "zpe_weights", "METHODS", "ZeroShotMethod",
    "create_method", "list_methods", "classify", "Classification", "Prediction", "write_predictions", "prediction_output",
    "read_labels", "resolve_classnames",
]
