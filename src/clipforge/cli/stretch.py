"""`clipforge stretch`: Long-CLIP's knowledge-preserving positional stretching of a model's text context."""
from __future__ import annotations

import json

from clipforge.cli._common import positive_int


def register(sub):
    p = sub.add_parser("stretch", help="stretch a model's text context (Long-CLIP), e.g. 77 -> 248 tokens",
                       description="Keep the first --keep position embeddings and interpolate the rest "
                                   "--factor times (Long-CLIP). Texts that fit the old context keep their "
                                   "embeddings exactly; longer ones are no longer truncated. Fine-tune the "
                                   "result with `loss: longclip`.")
    p.add_argument("model", help="registered name, checkpoint dir, hf:ORG/NAME, open_clip:ARCH/TAG")
    p.add_argument("--context-length", type=positive_int, default=None,
                   help="new number of text positions (default: keep + factor x the rest: 248 for 77)")
    p.add_argument("--keep", type=int, default=20, help="leading positions kept as they are (default 20)")
    p.add_argument("--factor", type=positive_int, default=None,
                   help="interpolation factor of the other positions (default: 4, or what the length needs)")
    p.add_argument("--short-positions", default="original", choices=["original", "stretched"],
                   help="texts that fit the old context: on their original positions (unchanged embeddings, "
                        "the default) or on consecutive new ones (as Long-CLIP)")
    p.add_argument("--out", "-o", required=True, help="output checkpoint directory (new, empty or a checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT even when it holds something else")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.models import load_model
    from clipforge.models.checkpoint import vet_checkpoint_dir
    from clipforge.models.stretch import stretch_model

    vet_checkpoint_dir(args.out, args.overwrite)
    old = load_model(args.model)
    new = stretch_model(old, args.context_length, keep=args.keep, factor=args.factor,
                        short_positions=args.short_positions)
    new.save_pretrained(args.out, overwrite=args.overwrite)
    t = new.config.text
    summary = {"out": str(args.out), "context_length": t.context_length, "stretched_from": t.stretched_from,
               "keep": t.stretch_keep, "factor": t.stretch_factor, "short_positions": t.short_positions}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.out}: text context {t.stretched_from} -> {t.context_length} tokens "
              f"(first {t.stretch_keep} kept, rest x{t.stretch_factor})")
    return 0
