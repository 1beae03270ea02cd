"""Two-stage retrieval on a synthetic set: a weak first stage, a strong second stage, what reranking buys.

    python bench/bench_rerank.py [--images 2000] [--captions 2] [--seeds 0,1,2] [--out docs/bench_rerank.md]

No strong pretrained model can be loaded offline here, so the two "models" are planted embeddings: every image
has a latent vector (dim 64); the first stage sees images and captions through heavy independent noise (a weak
model: recall@1 ~0.1), the second through light noise (strong). Each caption queries for its one image. The
rankings come from `clipforge.evaluate.two_stage_retrieval.two_stage_ranks`, the function behind
`clipforge eval --task zeroshot-retrieval --rerank`. Reported per rerank_k, mean and spread over seeds:
stage 1 R@1, stage 2 alone over the whole collection, the two-stage R@1, stage 1's candidate recall, and on
the queries whose image is a candidate, the two-stage R@1 next to the second model's own R@1 over the whole
collection.
"""
from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

from common import add_common_args, fmt, publish, summarize, write_results
from clipforge.evaluate.two_stage_retrieval import two_stage_ranks


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def one_seed(seed: int, n: int, caps: int, dim: int, weak: float, strong: float, ks) -> dict:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, dim))
    t2i = np.repeat(np.arange(n), caps)
    i1, t1 = _unit(truth + weak * rng.normal(size=(n, dim))), _unit(truth[t2i] + weak * rng.normal(size=(len(t2i), dim)))
    i2, t2 = _unit(truth + strong * rng.normal(size=(n, dim))), _unit(truth[t2i] + strong * rng.normal(size=(len(t2i), dim)))
    out = {}
    for k in ks:
        r = two_stage_ranks(t1, i1, t2, i2, t2i, k)
        c = r["candidate"]
        out[k] = {"stage1": (r["stage1"] <= 1).mean(), "stage2": (r["stage2"] <= 1).mean(),
                  "rerank": (r["rerank"] <= 1).mean(), "cand": c.mean(),
                  "rerank_on_cand": (r["rerank"][c] <= 1).mean(), "stage2_on_cand": (r["stage2"][c] <= 1).mean()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--captions", type=int, default=2, help="captions (queries) per image")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--weak", type=float, default=1.6, help="noise of the first stage (per unit of signal)")
    ap.add_argument("--strong", type=float, default=0.9, help="noise of the second stage")
    ap.add_argument("--rerank-k", default="10,50,100")
    ap.add_argument("--out", default=None)
    add_common_args(ap, seeds_help="planted sets")
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.rerank_k.split(",")]
    seeds = args.seeds
    runs = [one_seed(s, args.images, args.captions, args.dim, args.weak, args.strong, ks) for s in seeds]
    cols = ["stage1", "stage2", "rerank", "cand", "rerank_on_cand", "stage2_on_cand"]
    lines, stats = [], {}
    for k in ks:
        cells = []
        for c in cols:
            stats[f"k={k} {c}"] = summarize([r[k][c] for r in runs], seeds)
            cells.append(fmt(stats[f"k={k} {c}"], seeds=False))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
        ok = all(r[k]["rerank_on_cand"] >= r[k]["stage2_on_cand"] for r in runs)
        lines[-1] += f" {'yes' if ok else 'NO'} |"
    table = ("| rerank_k | stage 1 R@1 | stage 2 alone R@1 | two-stage R@1 | candidate recall | two-stage R@1 "
             "(candidate queries) | stage 2 alone R@1 (candidate queries) | two-stage >= stage 2 on candidates, "
             "every seed |\n|---:|---:|---:|---:|---:|---:|---:|---|\n" + "\n".join(lines))
    text = f"""# Two-stage retrieval on a synthetic set

`python bench/bench_rerank.py --images {args.images} --captions {args.captions} --weak {args.weak} --strong {args.strong} --seeds {','.join(map(str, seeds))}`
(Python {platform.python_version()}). {args.images} images, {args.captions} captions each ({args.images * args.captions}
queries), planted embeddings of dim {args.dim}: first stage noise {args.weak}, second stage {args.strong} (see the
script's docstring). Mean ± sample std over seeds {','.join(map(str, seeds))}. Rankings by `two_stage_ranks`, the function behind
`clipforge eval --task zeroshot-retrieval --rerank`.

{table}
"""
    publish(text, args.out)
    write_results(args.out, {"bench": "rerank", "seeds": seeds, "recall_at_1": stats, "runs": runs}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
