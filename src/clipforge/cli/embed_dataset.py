"""`clipforge embed-dataset`: a collection's embeddings in clip-retrieval's layout (no index), here or on Ray."""
from __future__ import annotations

import json

from clipforge.cli._common import (add_collection_job_args, add_executor_args, engine_options, executor_from_args,
                                   positive_int)


def register(sub):
    p = sub.add_parser(
        "embed-dataset", help="embed a whole collection into clip-retrieval-layout shards (local or Ray)",
        description="Embed every image of a source (and its first caption) into DIR: img_emb/img_emb_N.npy, "
                    "text_emb/text_emb_N.npy (float16, L2-normalised), metadata/metadata_N.parquet (id, key, "
                    "path, caption, ...), one committed shard per --shard-size samples. Re-run the same command "
                    "to resume a killed job; `clipforge index build SRC --model M --out DIR` later adds the "
                    "faiss index without embedding again. Unreadable images are skipped and counted.")
    add_collection_job_args(p, model_help="registered name, checkpoint dir, hf:ORG/NAME, ...",
                            out_help="output directory")
    p.add_argument("--precision", default="auto", help="auto (default), fp32, bf16 or fp16")
    p.add_argument("--shard-size", type=positive_int, default=10_000, help="samples per committed shard")
    p.add_argument("--no-text", action="store_true", help="do not embed captions (text_emb/)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda where available)")
    p.add_argument("--json", action="store_true", help="print the job summary as JSON")
    add_executor_args(p, "embed_dataset")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.retrieval.embed_dataset import embed_dataset

    executor, options = executor_from_args(args)
    s = embed_dataset(args.source, args.model, args.out_dir, batch_size=args.batch_size, workers=args.workers,
                      precision=args.precision, shard_size=args.shard_size, device=args.device,
                      text=False if args.no_text else "auto", executor=executor, executor_options=options,
                      **engine_options(args))
    if args.json:
        print(json.dumps(s, default=str))
        return 0
    ex = s.get("executor", {})
    print(f"embedded {s['out_dir']}: {s['count']} items, model {s['model']} ({s['precision']}), "
          f"executor {ex.get('executor', 'local')}"
          + (f" ({ex['num_workers']} workers)" if "num_workers" in ex else ""))
    print(f"  this run: embedded {s['embedded']} in {s['seconds']:.1f} s ({s['images_per_s']:.1f} images/s), "
          f"skipped {s['skipped_this_run']}"
          + (f", resumed after {s['resumed_from']}" if s.get("resumed_from") else ""))
    if s["skipped"]["total"]:
        print(f"  unreadable files: {s['skipped']['total']} " + json.dumps(s["skipped"]["by_reason"]))
    return 0
