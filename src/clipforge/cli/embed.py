"""`clipforge embed`: embed texts and/or images with a model and print shapes, norms or vectors."""
from __future__ import annotations

import json

from clipforge.cli._common import add_model_args, load_model_from_args
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
    from clipforge.embed import embed_images, embed_texts

    if not args.text and not args.image:
        raise UsageError("give --text and/or --image")
    model = load_model_from_args(args)
    rows = []
    if args.text:
        vecs = embed_texts(model, args.text, normalize=not args.no_normalize)
        rows += [{"kind": "text", "input": t, "vector": v} for t, v in zip(args.text, vecs)]
    if args.image:
        vecs, bad = embed_images(model, args.image, normalize=not args.no_normalize)
        good = [p for p in args.image if p not in bad]
        rows += [{"kind": "image", "input": p, "vector": v} for p, v in zip(good, vecs)]
        for path, reason in bad.items():
            print(f"skipped {path}: {reason}", file=__import__("sys").stderr)
    if args.json:
        print(json.dumps([{**r, "vector": [round(float(x), 6) for x in r["vector"]]} for r in rows]))
    else:
        for r in rows:
            v = r["vector"]
            print(f"{r['kind']:<6} dim={v.shape[0]} norm={float((v ** 2).sum() ** 0.5):.4f}  {r['input']}")
    return 1 if args.image and len(rows) == len(args.text) else 0
