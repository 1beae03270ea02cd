"""`clipforge index build|update|delete|info`: embed a collection into a searchable index directory."""
from __future__ import annotations

import json

import logging

from clipforge.cli._common import (add_collection_job_args, add_engine_args, add_executor_args, engine_options,
                                   add_overwrite_arg, add_token_merge_args, executor_from_args, full_parser_for,
                                   parse_item_ids, positive_int, token_merge_options)

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines about CPU builds are noise here


def _kind_choices() -> list[str] | None:
    """auto and the registered index kinds (the registry imports faiss: only for the `index` command itself)."""
    if not full_parser_for("index"):
        return None
    from clipforge.retrieval.kinds import INDEX_KINDS

    return ["auto", *INDEX_KINDS.names()]


def register(sub):
    p = sub.add_parser("index", help="build, update or describe a search index",
                       description="Embed a collection (any data source) into an index directory: float16 "
                                   "embeddings in clip-retrieval's layout, parquet metadata, a faiss index.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = isub.add_parser("build", help="embed a source into a new index (re-run to resume a killed build)")
    add_collection_job_args(b, model_help="registered name or checkpoint directory",
                            out_help="index directory to write")
    b.add_argument("--max-memory", default=None, help="memory budget of the faiss index, e.g. 4GB")
    b.add_argument("--precision", default="auto",
                   help="auto (default: bf16 weights where the hardware multiplies bf16 natively and the model is "
                        "large, else fp32), fp32, bf16, fp16, or int8 (--engine onnx/openvino/auto: dynamic int8 "
                        "quantisation of the Linear layers)")
    b.add_argument("--shard-size", type=positive_int, default=10_000, help="samples per committed shard")
    b.add_argument("--index-kind", choices=_kind_choices(), default="auto")
    b.add_argument("--min-recall", type=float, default=None,
                   help="warn when the index's recall@10 against exact search (measured on a sample of the "
                        "collection's own vectors, recorded in index.json) is below this (default 0.9)")
    b.add_argument("--no-text", action="store_true", help="do not embed captions (text_emb/)")
    b.add_argument("--device", default=None)
    add_executor_args(b, "index")
    add_token_merge_args(b, default="0 exact (default); recorded in index.json: updates, a resumed build and "
                                    "image queries use it")
    b.set_defaults(func=run_build)
    u = isub.add_parser("update", help="add new, re-embed changed, drop deleted files; rebuild the index")
    u.add_argument("index_dir")
    u.add_argument("--workers", type=int, default=2)
    u.add_argument("--max-memory", default=None)
    u.add_argument("--index-kind", choices=_kind_choices(), default=None)
    u.add_argument("--device", default=None)
    u.add_argument("--min-recall", type=float, default=None,
                   help="warn when the rebuilt index's recall@10 is below this (default: the build's)")
    u.add_argument("--include-deleted", action="store_true",
                   help="bring back items removed with `index delete` whose files are still in the source")
    u.add_argument("--allow-pipe", action="store_true",
                   help="run the shell command of a pipe: source that INDEX_DIR/index.json records (refused "
                        "otherwise: a command read from a file runs only when you accept it; see docs/security.md)")
    add_engine_args(u, default=None)
    add_token_merge_args(u, default="0 exact; default: as the index was built (a different value is refused)")
    u.set_defaults(func=run_update)
    d = isub.add_parser("delete", help="remove items by id, path glob or metadata filter (ids are never reused)",
                        description="Remove items from an index: they leave search at once (a running "
                                    "`clipforge serve` picks the change up within a second) and stay out "
                                    "when `index update` runs again.")
    d.add_argument("index_dir")
    how = d.add_mutually_exclusive_group(required=True)
    how.add_argument("--id", dest="ids", nargs="+", metavar="N",
                     help="item ids (as search shows them): decimal digits")
    how.add_argument("--path", dest="paths", action="append", metavar="GLOB",
                     help="files whose path or key matches, e.g. '*/private/*' (repeatable: any matches)")
    how.add_argument("--filter", dest="filters", action="append", metavar="COL OP VALUE",
                     help="metadata filter as in search, e.g. 'caption*=screenshot' (repeatable: all must match)")
    d.add_argument("--dry-run", action="store_true", help="list what would be deleted, change nothing")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    d.set_defaults(func=run_delete)
    i = isub.add_parser("info", help="print an index's manifest")
    i.add_argument("index_dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run_info)
    _register_sharded(isub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _merge_said(info: dict) -> str:
    """", token merge tome r=2" for an index embedded with token merging, else ""."""
    from clipforge.models.token_merge import token_merge_setting

    tm = token_merge_setting(info.get("token_merge"))
    return f", token merge {tm.describe()}" if tm is not None else ""


def _print_summary(s: dict) -> None:
    from clipforge.data.display import shown  # names and paths: one line each, no control characters raw

    idx = s["index"]
    rec = (idx.get("recall@10") or {}).get("recall@10")
    print(f"index {shown(s['out_dir'])}: {s['count']} items, model {shown(s['model'])} ({s['precision']}"
          f"{_merge_said(s)})")
    print(f"  this run: embedded {s['embedded']} in {s['seconds']:.1f} s ({s['images_per_s']:.1f} images/s), "
          f"skipped {s['skipped_this_run']}" + "".join(f", {k} {s[k]}" for k in ("added", "changed", "deleted")
                                                       if k in s))
    if s["skipped"]["total"]:
        print(f"  unreadable files: {s['skipped']['total']} " + json.dumps(s["skipped"]["by_reason"]))
    print(f"  faiss: {idx['kind']} ({idx['reason']})" + (f", recall@10 {rec:.3f} vs exact" if rec is not None
                                                         else ""))


def run_build(args) -> int:
    from clipforge.retrieval.build import build_index

    executor, options = executor_from_args(args)
    s = build_index(args.source, args.model, args.out_dir, batch_size=args.batch_size, workers=args.workers,
                    max_memory=args.max_memory, precision=args.precision, shard_size=args.shard_size,
                    device=args.device, text=False if args.no_text else "auto", index_kind=args.index_kind,
                    executor=executor, executor_options=options,
                    **({} if args.min_recall is None else {"min_recall": args.min_recall}), **engine_options(args))
    _print_summary(s)
    return 0


def run_update(args) -> int:
    from clipforge.retrieval.build import update_index

    s = update_index(args.index_dir, workers=args.workers, max_memory=args.max_memory,
                     index_kind=args.index_kind, device=args.device, include_deleted=args.include_deleted,
                     engine=args.engine, threads=args.threads, allow_pipe=args.allow_pipe,
                     min_recall=args.min_recall, **token_merge_options(args))
    _print_summary(s)
    return 0


def run_delete(args) -> int:
    from clipforge.errors import UsageError
    from clipforge.retrieval.delete import delete_items

    ids = parse_item_ids(args.ids) if args.ids else None
    try:
        res = delete_items(args.index_dir, ids=ids, paths=args.paths, filters=args.filters,
                           dry_run=args.dry_run)
    except UsageError as e:  # the library names its parameters; say the flags
        msg = str(e)
        for param, flag in (("`ids`", "--id"), ("`paths`", "--path"), ("`filters`", "--filter")):
            msg = msg.replace(param, flag)
        raise UsageError(msg) from None
    if args.json:
        print(json.dumps(res))
        return 0
    from clipforge.data.display import shown  # keys are file names: a hostile one cannot forge lines

    verb = "would delete" if args.dry_run else "deleted"
    print(f"{shown(args.index_dir)}: {verb} {res['deleted']} items, {res['count']} left")
    for i, k in list(zip(res["ids"], res["keys"]))[:20]:
        print(f"  {i:>8}  {shown(k)}")
    if res["deleted"] > 20:
        print(f"  ... and {res['deleted'] - 20} more")
    if res["not_found"]:
        print(f"  not in the index: {' '.join(map(str, res['not_found'][:20]))}")
    return 0


def run_info(args) -> int:
    from clipforge.retrieval.build import index_info

    info = index_info(args.index_dir)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    from clipforge.data.display import shown

    idx = info.get("index", {})
    rec = (idx.get("recall@10") or {}).get("recall@10")
    print(f"{shown(args.index_dir)}: {info['store']['live']} items ({info['store']['deleted']} deleted rows), "
          f"dim {info['store']['dim']}, status {info['status']}")
    print(f"  source {shown(info['source'])}\n  model {shown(info['model'])} ({info['precision']}"
          f"{_merge_said(info)}), captions embedded: {info['text']}")
    print(f"  faiss {idx.get('kind')}: {idx.get('reason')}" + (f"; recall@10 {rec:.3f}" if rec is not None else ""))
    sk = info.get("skipped", {})
    print(f"  unreadable files: {sk.get('total', 0)} {json.dumps(sk.get('by_reason', {}))}")
    return 0


# ---- sharded builds: shard-train, shard-build, merge --------------------------------------------------

def _register_sharded(isub) -> None:
    t = isub.add_parser("shard-train", help="train the empty index every shard starts from (sharded build, step 1)",
                        description="Train an empty faiss index on a sample of a store's embeddings. Copy the "
                                    "file to every worker; each runs `index shard-build`, then `index merge`.")
    t.add_argument("store", help="index directory or clip-retrieval embeddings folder (img_emb/, metadata/)")
    t.add_argument("--out", "-o", required=True, help="trained template file to write")
    t.add_argument("--index-kind", choices=_kind_choices(), default="auto",
                   help="auto: what `index build` would choose for the whole store")
    t.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="index parameter, e.g. nlist=4096 or m=64 (repeatable)")
    t.add_argument("--sample", type=positive_int, default=100_000, help="training rows (default 100000)")
    t.add_argument("--max-memory", default=None, help="memory budget of the merged index (auto kind), e.g. 8GB")
    t.add_argument("--seed", type=int, default=0)
    add_overwrite_arg(t)
    t.set_defaults(func=run_shard_train)
    b = isub.add_parser("shard-build", help="add one part of a store to a copy of the template (step 2, per worker)")
    b.add_argument("store")
    b.add_argument("--trained", required=True, help="template file from `index shard-train`")
    b.add_argument("--part", required=True, help="I/N: this worker takes the store shards at positions p %% N == I")
    b.add_argument("--out", "-o", required=True, help="shard file to write")
    add_overwrite_arg(b)
    b.set_defaults(func=run_shard_build)
    m = isub.add_parser("merge", help="merge shard files into one index, or into shards searched together (step 3)")
    m.add_argument("shards", nargs="+", help="shard files from `index shard-build`")
    m.add_argument("--out", "-o", required=True,
                   help="index file to write; an index directory gets it as its index.faiss (then `search` uses it)")
    m.add_argument("--mode", choices=["auto", "single", "query"], default="auto",
                   help="single: one index (flat, IVF kinds); query: keep the files, search them as one "
                        "(any kind); auto: single unless hnsw")
    m.add_argument("--on-disk", action="store_true",
                   help="IVF without a refine store: write the inverted lists to an .ivfdata file beside --out "
                        "that search memory-maps (the index need not fit in RAM)")
    m.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="search parameter to store with the index, e.g. nprobe=64 or efSearch=128")
    add_overwrite_arg(m)
    m.set_defaults(func=run_merge)


def _parse_params(items: list[str]) -> dict:
    from clipforge.errors import UsageError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = None if value.lower() == "none" else value
    return out


def _size(path) -> str:
    from pathlib import Path

    return f"{Path(path).stat().st_size / 2**20:.1f} MiB"


def run_shard_train(args) -> int:
    from clipforge.retrieval.faiss_build import parse_size
    from clipforge.retrieval.sharded import train_template_from_store, vet_index_file

    vet_index_file(args.out, overwrite=args.overwrite)
    t = train_template_from_store(args.store, args.index_kind, args.sample, parse_size(args.max_memory),
                                  args.seed, **_parse_params(args.param))
    t.save(args.out)
    print(f"template {args.out}: {t.kind} {json.dumps(t.params)}, trained on {t.info['template']['train_rows']} "
          f"of {t.info['template']['n_planned']} vectors ({_size(args.out)})")
    return 0


def run_shard_build(args) -> int:
    from clipforge.retrieval.sharded import build_shard_from_store, vet_index_file

    vet_index_file(args.out, overwrite=args.overwrite)
    s = build_shard_from_store(args.store, args.trained, args.part)
    s.save(args.out)
    print(f"shard {args.out}: part {args.part}, {len(s)} vectors, {s.kind} ({_size(args.out)})")
    return 0


def run_merge(args) -> int:
    from pathlib import Path

    from clipforge.retrieval.sharded import merge_shards, vet_index_file

    from clipforge.retrieval.index_dir import IndexDir

    out = Path(args.out)
    index_dir = IndexDir(out) if out.is_dir() and not out.is_symlink() else None
    if index_dir is not None:
        out = index_dir.index_path
    vet_index_file(out, overwrite=args.overwrite)
    merged = merge_shards(args.shards, out, mode=args.mode, on_disk=args.on_disk,
                          search_params=_parse_params(args.param))
    if index_dir is not None and index_dir.info_path.exists():  # what `index info` and `serve` report
        info = index_dir.read_info()
        info["index"] = {"kind": merged.kind, "reason": f"merged from {len(args.shards)} shards ({args.mode})",
                         "n": len(merged), "dim": merged.d, "params": dict(merged.params)}
        index_dir.write_info(info)
    how = (f"{len(merged.shards)} shards searched together" if hasattr(merged, "shards") else
           "one index" + (" (inverted lists on disk)" if args.on_disk else ""))
    print(f"merged {len(args.shards)} shard(s) into {out}: {len(merged)} vectors, {merged.kind}, {how}")
    return 0
