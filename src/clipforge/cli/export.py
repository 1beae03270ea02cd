"""`clipforge export MODEL --to hf|open_clip --out DIR`: write a model in another ecosystem's format."""
from __future__ import annotations

import argparse

from clipforge.cli._common import full_parser_for


def register(sub):
    p = sub.add_parser(
        "export", help="export a model to Hugging Face transformers or open_clip format",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write MODEL (any reference load_model accepts) as a directory that transformers\n"
                    "(CLIPModel / SiglipModel.from_pretrained) or open_clip (create_model('local-dir:DIR')) loads.\n"
                    "\n"
                    "What each format holds:\n"
                    "  --to open_clip  class-token ViT image towers, and ResNet ones (vision.arch=resnet:\n"
                    "                  tiny-resnet, the demo's model, as open_clip's ModifiedResNet)\n"
                    "  --to hf         class-token ViT (CLIPModel) and SigLIP-type ViT (SiglipModel) towers only:\n"
                    "                  transformers has no ResNet CLIP, so the demo's model is refused; for an\n"
                    "                  HF model from the demo train a ViT, e.g.\n"
                    "                    clipforge train --config demo-digits --set model.name=tiny \\\n"
                    "                      --set 'model.overrides={vision: {pool: cls, act: quick_gelu}, "
                    "text: {act: quick_gelu}}'\n"
                    "Neither takes the registered `tiny` as it is (mean pooling), EfficientNet, timm or Hugging Face\n"
                    "text towers with a projection head, or per-image normalisation. docs/export.md has the details.")
    p.add_argument("model", help="registered name, checkpoint dir, hf:ORG/NAME, open_clip:ARCH/TAG, or local dir")
    if full_parser_for("export"):  # the converters import torch: only when this command runs
        from clipforge.models.convert.export import FORMATS

        p.add_argument("--to", required=True, choices=FORMATS, help="target format")
    p.add_argument("--out", required=True, help="output directory: new, empty, or an earlier export of this format "
                                                "(replaced atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT even when it holds something else")
    p.add_argument("--weights", default=None, help="weights file for a registered architecture / open_clip:ARCH")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled .pt/.bin weights")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.models import load_model
    from clipforge.models.convert.export import export_model

    model = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle)
    out = export_model(model, args.to, args.out, overwrite=args.overwrite)
    print(f"wrote {args.to} model to {out}")
    return 0
