"""`clipforge models`: list registered architectures."""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("models", help="list registered model architectures",
                       description="List registered model configs with parameter counts and shapes.")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.models.summary import describe_models

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<14}{'params':>14}{'embed':>7}{'image':>7}{'patch':>7}{'ctx':>5}  head")
    for r in rows:
        print(f"{r['name']:<14}{r['parameters']:>14,}{r['embed_dim']:>7}{r['image_size']:>7}{r['patch_size']:>7}"
              f"{r['context_length']:>5}  {r['head']}")
    return 0
