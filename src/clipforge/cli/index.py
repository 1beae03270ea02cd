"""`clipforge index build|update|info`: embed a collection into a searchable index directory."""
from __future__ import annotations

import json

import logging

from clipforge.cli._common import positive_int

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines about CPU builds are noise here


def register(sub):
    p = sub.add_parser("index", help="build, update or describe a search index",
                       description="Embed a collection (any data source) into an index directory: float16 "
                                   "embeddings in clip-retrieval's layout, parquet metadata, a faiss index.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = isub.add_parser("build", help="embed a source into a new index (re-run to resume a killed build)")
    b.add_argument("source", help="data source spec: a folder, files:DIR, csv:/jsonl:/parquet: manifest, wds:...")
    b.add_argument("--model", "-m", required=True, help="registered name or checkpoint directory")
    b.add_argument("--out", "-o", dest="out_dir", required=True, help="index directory to write")
    b.add_argument("--batch-size", type=positive_int, default=64)
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images (0: in-process)")
    b.add_argument("--max-memory", default=None, help="memory budget of the faiss index, e.g. 4GB")
    b.add_argument("--precision", default="auto",
                   help="auto (default: bf16 weights where the hardware multiplies bf16 natively and the model is "
                        "large, else fp32), fp32, bf16 or fp16")
    b.add_argument("--shard-size", type=positive_int, default=10_000, help="samples per committed shard")
    b.add_argument("--index-kind", choices=["auto", "flat", "hnsw", "ivf_flat", "ivf_pq"], default="auto")
    b.add_argument("--no-text", action="store_true", help="do not embed captions (text_emb/)")
    b.add_argument("--device", default=None)
    b.set_defaults(func=run_build)
    u = isub.add_parser("update", help="add new, re-embed changed, drop deleted files; rebuild the index")
    u.add_argument("index_dir")
    u.add_argument("--workers", type=int, default=2)
    u.add_argument("--max-memory", default=None)
    u.add_argument("--index-kind", choices=["auto", "flat", "hnsw", "ivf_flat", "ivf_pq"], default=None)
    u.add_argument("--device", default=None)
    u.set_defaults(func=run_update)
    i = isub.add_parser("info", help="print an index's manifest")
    i.add_argument("index_dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _print_summary(s: dict) -> None:
    idx = s["index"]
    rec = (idx.get("recall@10") or {}).get("recall@10")
    print(f"index {s['out_dir']}: {s['count']} items, model {s['model']} ({s['precision']})")
    print(f"  this run: embedded {s['embedded']} in {s['seconds']:.1f} s ({s['images_per_s']:.1f} images/s), "
          f"skipped {s['skipped_this_run']}" + "".join(f", {k} {s[k]}" for k in ("added", "changed", "deleted")
                                                       if k in s))
    if s["skipped"]["total"]:
        print(f"  unreadable files: {s['skipped']['total']} " + json.dumps(s["skipped"]["by_reason"]))
    print(f"  faiss: {idx['kind']} ({idx['reason']})" + (f", recall@10 {rec:.3f} vs exact" if rec is not None
                                                         else ""))


def run_build(args) -> int:
    from clipforge.retrieval.build import build_index

    s = build_index(args.source, args.model, args.out_dir, batch_size=args.batch_size, workers=args.workers,
                    max_memory=args.max_memory, precision=args.precision, shard_size=args.shard_size,
                    device=args.device, text=False if args.no_text else "auto", index_kind=args.index_kind)
    _print_summary(s)
    return 0


def run_update(args) -> int:
    from clipforge.retrieval.build import update_index

    s = update_index(args.index_dir, workers=args.workers, max_memory=args.max_memory,
                     index_kind=args.index_kind, device=args.device)
    _print_summary(s)
    return 0


def run_info(args) -> int:
    from clipforge.retrieval.build import index_info

    info = index_info(args.index_dir)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    idx = info.get("index", {})
    rec = (idx.get("recall@10") or {}).get("recall@10")
    print(f"{args.index_dir}: {info['store']['live']} items ({info['store']['deleted']} deleted rows), "
          f"dim {info['store']['dim']}, status {info['status']}")
    print(f"  source {info['source']}\n  model {info['model']} ({info['precision']}), captions embedded: "
          f"{info['text']}")
    print(f"  faiss {idx.get('kind')}: {idx.get('reason')}" + (f"; recall@10 {rec:.3f}" if rec is not None else ""))
    sk = info.get("skipped", {})
    print(f"  unreadable files: {sk.get('total', 0)} {json.dumps(sk.get('by_reason', {}))}")
    return 0
