"""`clipforge models`: list registered architectures (or, with --pretrained, known pretrained references)."""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("models", help="list registered model architectures",
                       description="List registered model configs with parameter counts and shapes.")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--pretrained", action="store_true",
                   help="list the pretrained references clipforge can fetch (sizes, whether network is needed)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.pretrained:
        return _run_pretrained(args)
    from clipforge.models.summary import describe_models

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<14}{'params':>14}{'embed':>7}{'image':>7}{'patch':>7}{'ctx':>5}  head")
    for r in rows:
        print(f"{r['name']:<14}{r['parameters']:>14,}{r['embed_dim']:>7}{r['image_size']:>7}{r['patch_size'] or '-':>7}"
              f"{r['context_length']:>5}  {r['head']}")
    return 0


def _run_pretrained(args) -> int:
    from clipforge.models.pretrained import list_pretrained

    rows = list_pretrained()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'reference':<44}{'family':>7}{'params':>9}{'download':>10}{'image':>6}  network  note")
    for r in rows:
        net = "needed" if r["needs_network"] else "cached"
        print(f"{r['ref']:<44}{r['family']:>7}{r['parameters_m']:>8.1f}M{r['download_mb']:>8} MB{r['image_size']:>6}"
              f"  {net:<7}  {r['note']}")
    return 0
