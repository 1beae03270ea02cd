"""`clipforge export MODEL --to hf|open_clip --out DIR`: write a model in another ecosystem's format."""
from __future__ import annotations

from clipforge.cli._common import full_parser_for


def register(sub):
    p = sub.add_parser(
        "export", help="export a model to Hugging Face transformers or open_clip format",
        description="Write MODEL (any reference load_model accepts) as a directory that transformers "
                    "(CLIPModel / SiglipModel.from_pretrained) or open_clip (create_model('local-dir:DIR')) loads.")
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
