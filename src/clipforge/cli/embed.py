"""`clipforge embed`: embed texts and/or images with a model and print shapes, norms or vectors."""
from __future__ import annotations

import json
import sys

from clipforge.cli._common import add_model_args, load_encoder_from_args
from clipforge.errors import UsageError


def register(sub):
    p = sub.add_parser("embed", help="embed texts or images", description="Embed texts and/or images.")
    add_model_args(p)
    p.add_argument("--text", "-t", nargs="+", default=[], help="texts to embed")
    p.add_argument("--image", "-i", nargs="+", default=[], help="image files to embed")
    p.add_argument("--json", action="store_true", help="print JSON with the vectors")
    p.add_argument("--no-normalize", action="store_true", help="return unnormalised embeddings")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.data.display import shown
    from clipforge.data.sources.filelist import FileListSource

    if not args.text and not args.image:
        raise UsageError("give --text and/or --image")
    encoder = load_encoder_from_args(args)
    rows = []
    if args.text:
        vecs = encoder.encode_texts(args.text, normalize=not args.no_normalize).numpy()
        rows += [{"kind": "text", "input": t, "vector": v} for t, v in zip(args.text, vecs)]
    if args.image:
        res = encoder.encode_source(FileListSource(args.image), 64, normalize=not args.no_normalize, progress=False)
        rows += [{"kind": "image", "input": p, "vector": v} for p, v in zip(res.ids, res.feats.numpy())]
        for path, reason in res.skipped.samples:
            print(f"skipped {shown(path)}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps([{**r, "vector": [round(float(x), 6) for x in r["vector"]]} for r in rows]))
    else:
        for r in rows:
            v = r["vector"]
            print(f"{r['kind']:<6} dim={v.shape[0]} norm={float((v ** 2).sum() ** 0.5):.4f}  {shown(r['input'])}")
    return 1 if args.image and len(rows) == len(args.text) else 0
