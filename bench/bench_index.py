"""Search latency and recall@10 of clipforge's faiss indexes on embedding-shaped vectors.

    python bench/bench_index.py                       # 50k x 512, exact / hnsw / ivf_flat, a few minutes
    python bench/bench_index.py --kinds flat,ivf_pqfs # any VectorIndex kinds (1M x 512: bench/bench_1m.py)
    python bench/bench_index.py --data random         # isotropic Gaussian vectors: the worst case for ANN

Data: low-rank signal (rank 64, decaying spectrum) + isotropic noise, unit rows (see
clipforge.retrieval.synthetic.synthetic_embeddings); queries come from the same distribution. Approximate indexes
get their search parameter (efSearch / nprobe) tuned to the target recall on the first half of the queries,
then latency and recall are measured on the other half. Latency = one query per call (a user's request);
"batch" = all queries in one call, per query. Results are appended to docs/bench_index.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from common import add_common_args, fmt, machine, machine_line, summarize, write_results
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.recall import exact_knn, tune_recall
from clipforge.retrieval.synthetic import synthetic_embeddings


def _recall(got, truth):
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))


def bench_kind(kind, params, xb, q_tune, q_eval, truth_eval, target, k=10):
    t0 = time.perf_counter()
    index = VectorIndex.build(xb, kind=kind, **params)
    build_s = time.perf_counter() - t0
    if kind != "flat":
        tune_recall(index, xb, q_tune, target=target, k=k)
    lat = []
    for qi in q_eval:
        t = time.perf_counter()
        index.search(qi[None], k)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, got = index.search(q_eval, k)
    batch_ms = (time.perf_counter() - t) * 1e3 / len(q_eval)
    lat_ms = np.array(lat) * 1e3
    return {"kind": kind, "params": dict(index.params), "build_s": build_s, "recall": _recall(got, truth_eval),
            "p50_ms": float(np.median(lat_ms)), "p99_ms": float(np.percentile(lat_ms, 99)), "batch_ms": batch_ms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="collection size (default 50000)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--queries", type=int, default=400, help="half tune the parameters, half are measured")
    ap.add_argument("--data", choices=("embedding", "random"), default="embedding")
    ap.add_argument("--kinds", default="flat,hnsw,ivf_flat")
    ap.add_argument("--target", type=float, default=0.95, help="recall@10 the approximate kinds are tuned to")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: all)")
    ap.add_argument("--out", default="docs/bench_index.md")
    add_common_args(ap, seeds=(0,), seeds_help="one repeat per seed, each on its own synthetic collection and queries")
    args = ap.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    per_seed = {seed: measure(args, seed) for seed in args.seeds}
    rows = []
    for i, r in enumerate(per_seed[args.seeds[0]]):
        stats = {k: summarize([per_seed[s][i][k] for s in args.seeds], args.seeds)
                 for k in ("build_s", "recall", "p50_ms", "p99_ms", "batch_ms")}
        rows.append({"kind": r["kind"], "params": r["params"], **stats})

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = "" if out.exists() else (
        "# Index benchmark\n\nWritten by `bench/bench_index.py` (one section per run, newest last). "
        "Recall@10 is against exact search on held-out queries; approximate kinds are tuned to the target "
        "recall on separate queries first. p50/p99: one query per call. Each figure: mean ± sample std over "
        "the seeds (each seed its own collection and queries).\n")
    seeds = ",".join(map(str, args.seeds))
    lines = [head, f"\n## {time.strftime('%Y-%m-%d %H:%M')}: {args.n:,} x {args.d} {args.data} vectors, seeds {seeds}\n",
             f"\nMachine: {machine_line()}, faiss {faiss.__version__}, "
             f"{faiss.omp_get_max_threads()} threads, target recall@10 {args.target}.\n\n",
             "| kind | params (first seed) | build s | recall@10 | p50 ms | p99 ms | batch ms/query |\n",
             "|---|---|---:|---:|---:|---:|---:|\n"]
    for r in rows:
        p = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {r['kind']} | {p} | {fmt(r['build_s'], 1, False)} | {fmt(r['recall'], 3, False)} | "
                     f"{fmt(r['p50_ms'], 2, False)} | {fmt(r['p99_ms'], 2, False)} | {fmt(r['batch_ms'], 3, False)} |\n")
    with open(out, "a") as f:
        f.write("".join(lines))
    print(f"appended to {out}")
    write_results(out, {"bench": "index", "seeds": args.seeds, "n": args.n, "d": args.d, "data": args.data,
                        "rows": rows, "per_seed": per_seed, "machine": machine()}, args.json)
    return 0


def measure(args, seed: int) -> list[dict]:
    t0 = time.perf_counter()
    if args.data == "embedding":
        xb, q = synthetic_embeddings(args.n, args.d, seed=seed, n_queries=args.queries)
    else:
        rng = np.random.default_rng(seed)
        xb = rng.standard_normal((args.n, args.d), dtype=np.float32)
        q = rng.standard_normal((args.queries, args.d), dtype=np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    half = args.queries // 2
    q_tune, q_eval = q[:half], q[half:]
    _, truth = exact_knn(xb, q_eval, 10)
    print(f"data {args.n} x {args.d} ({args.data}) ready in {time.perf_counter() - t0:.1f} s", flush=True)

    params = {"flat": {}, "hnsw": {"M": args.hnsw_m, "efConstruction": args.ef_construction, "efSearch": 32},
              "ivf_flat": {"nprobe": 8}, "ivf_pq": {"nprobe": 8}, "ivf_pqfs": {"nprobe": 8}}
    rows = []
    for kind in args.kinds.split(","):
        r = bench_kind(kind, params[kind], xb, q_tune, q_eval, truth, args.target)
        rows.append(r)
        print(f"{kind:9s} build {r['build_s']:7.1f} s  recall@10 {r['recall']:.3f}  p50 {r['p50_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms  batch {r['batch_ms']:.3f} ms/q  {r['params']}", flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
