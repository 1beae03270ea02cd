"""`clipforge caption`: captions for image files from a captioning model (a CoCa), printed or as JSON."""
from __future__ import annotations

import json
import sys

METHODS = ("greedy", "beam", "top-p")  # clipforge.models.generation.METHODS, with the CLI's spelling


def add_captioner_args(p) -> None:
    """--model and the decoding options shared by `caption` and `curate recaption`."""
    p.add_argument("--model", "-m", required=True,
                   help="a captioning model: a CoCa checkpoint dir, coca-tiny / coca_ViT-B-32 (random init), "
                        "open_clip:coca_ViT-B-32/TAG, or an open_clip CoCa directory")
    p.add_argument("--weights", default=None, help="weights file (.safetensors) for a registered architecture")
    p.add_argument("--tokenizer", default=None, metavar="PATH", help="the model's tokenizer files, if not beside it")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights precision (default auto)")
    p.add_argument("--method", default="beam", choices=METHODS, help="decoding (default beam)")
    p.add_argument("--max-tokens", type=int, default=20, help="most tokens per caption (default 20)")
    p.add_argument("--min-tokens", type=int, default=0, help="no end before this many tokens (default 0)")
    p.add_argument("--beams", type=int, default=4, help="beam width (default 4)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus mass for --method top-p (default 0.9)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for top-p (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for top-p (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")


def captioner_from_args(args):
    from clipforge.encode.captioner import Captioner

    return Captioner.load(args.model, device=args.device, precision=args.precision, weights=args.weights,
                          tokenizer=args.tokenizer)


def decode_options(args) -> dict:
    return {"method": args.method.replace("-", "_"), "max_tokens": args.max_tokens, "min_tokens": args.min_tokens,
            "beams": args.beams, "top_p": args.top_p, "temperature": args.temperature, "seed": args.seed}


def register(sub):
    p = sub.add_parser("caption", help="caption images with a CoCa model",
                       description="Caption image files with a captioning model (CoCa): greedy, beam search or "
                                   "nucleus (top-p) sampling. Unreadable files are skipped and named on stderr.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_captioner_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON list of {image, caption}")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.data.decode import SkipCounter
    from clipforge.data.display import shown
    from clipforge.data.sources.filelist import FileListSource

    cap = captioner_from_args(args)
    skipped = SkipCounter()
    rows = []
    for batch, captions in cap.caption_source(FileListSource(args.images), args.batch_size, skipped=skipped,
                                              progress=False, **decode_options(args)):
        rows += [{"image": i, "caption": c} for i, c in zip(batch.ids, captions)]
    for path, reason in skipped.samples:
        print(f"skipped {shown(path)}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            print(f"{shown(r['image'])}\t{r['caption']}")
    return 1 if not rows else 0
