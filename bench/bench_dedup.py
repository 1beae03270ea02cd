"""De-duplication's default, measured: the radius measured on the data (eps="auto") against fixed radii, for the
pixel descriptor and a model's embeddings, on planted copies and on a set with no duplicates at all.

    python bench/bench_dedup.py --work /tmp/dedupbench --out docs/bench_dedup.md [--score-steps 150] [--seeds 0]

1. Planted set: bench_curation's set B (1,137 digits of the digits demo, mismatched captions do not matter
   here) with a planted copy of 15% of them: exact byte copy, PNG re-save, up-scaled 32->48, down-scaled
   32->24, JPEG q=85, shifted one pixel.
2. Distinct set: 400 digits of the demo's training split, no copies (the images are all different; many are
   alike, as handwritten digits of one class are).
3. Features: the model-free 16x16 pixel descriptor, and the image embeddings of the demo config trained for
   `--score-steps` on bench_curation's set A (a weak model, as a first model is: it maps a class near one point).
4. Every radius: removals, precision (removals whose `duplicate_of` is in the same planted group), recall per
   copy kind; on the distinct set every removal is wrong. The default is `dedup_source(source, out,
   scores=...)` with nothing else given.

Stages are cached in --work (the scorer, the scores). Each seed plants its own copies and trains its own scorer
(seed 0 in --work itself, seed N in --work/seed-N); the page shows the first seed, the JSON every seed and the
mean ± sample std of each row's precision and recall over the seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, summarize, write_results  # noqa: E402
from bench_curation import COPY_KINDS, dedup_pr, load_jsonl, make_sets, train_run, write_jsonl  # noqa: E402

RADII = ("auto", 0.005, 0.01, 0.02, 0.05)


def run(spec: str, scores: Path, out_dir: Path, features: str, eps, truth: dict | None) -> dict:
    from clipforge.curate import dedup_source, read_removals
    from clipforge.errors import UsageError

    out = out_dir / f"{features}-{eps}.jsonl"
    done = out.with_suffix(".summary.json")
    try:
        s = (json.loads(done.read_text()) if done.exists() else
             dedup_source(spec, out, scores=scores, features=features, max_removed=1.0,
                          **({} if eps == "auto" else {"eps": eps})))
    except UsageError as e:
        return {"features": features, "eps": eps, "error": str(e)}
    rem = read_removals(s["removals_file"])
    near = [r for r in rem if "near_duplicate" in r["reasons"]]
    row = {"features": features, "eps": eps, "eps_used": s["eps"], "removed": len([r for r in rem if "duplicate_of" in r]),
           "near": len(near), "would_refuse": len(near) > 0.5 * s["samples_kept"]}
    if truth is not None:
        row.update(dedup_pr([r for r in rem if "duplicate_of" in r], truth))
        shifted = {c["id"] for c in truth["copies"] if c["kind"] == "shift"}
        found_other = [k for k in COPY_KINDS if k != "shift"]
        row["recall_without_shift"] = (sum(row["recall_by_kind"][k] * sum(1 for c in truth["copies"] if c["kind"] == k)
                                           for k in found_other)
                                       / max(len(truth["copies"]) - len(shifted), 1))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/clipforge-dedup-bench")
    ap.add_argument("--out", default=None, help="markdown results page to write")
    ap.add_argument("--score-steps", type=int, default=150)
    ap.add_argument("--distinct", type=int, default=400)
    ap.add_argument("--demo-model", default=None,
                    help="also measure the model `clipforge demo` trains (its runs/digits/final): the README's case")
    add_common_args(ap, seeds=(0,), seeds_help="planted-copy draws and scorer seeds")
    a = ap.parse_args()
    per_seed = {seed: measure(a, Path(a.work) / ("" if seed == 0 else f"seed-{seed}"), seed) for seed in a.seeds}
    truth, scorer, rows = per_seed[a.seeds[0]]
    summary = {}
    for name, rs in rows.items():
        for i, r in enumerate(rs):
            for key in ("precision", "recall", "removed"):
                vals = [per_seed[s][2][name][i].get(key) for s in a.seeds]
                if None not in vals:
                    summary[f"{name} {r['features']} eps={r['eps']} {key}"] = summarize(vals, a.seeds)
    if a.out:
        write_page(Path(a.out), a, truth, scorer, rows)
    write_results(a.out, {"bench": "dedup", "seeds": a.seeds, "score_steps": a.score_steps,
                          "rows": {s: v[2] for s, v in per_seed.items()}, "summary": summary}, a.json)


def measure(a, work: Path, seed: int):
    from clipforge.curate import score_source
    from clipforge.data.demo_sets import build_digits

    work.mkdir(parents=True, exist_ok=True)
    digits = build_digits(str(work / "digits"))
    truth = make_sets(work, digits, seed, 0.4, 0.15)
    scorer = train_run(f"jsonl:{truth['paths']['a_train']}", digits, work / "scorer", seed, a.score_steps)
    ckpt = str(work / "scorer" / "final")
    planted, distinct = f"jsonl:{truth['paths']['b_raw']}", work / "distinct.jsonl"
    if not distinct.exists():
        rows = load_jsonl(digits["train_manifest"])[: a.distinct]
        for r in rows:
            r["image"] = str(Path(digits["root"]) / r["image"])
        write_jsonl(distinct, rows)
    sets = {"planted": (planted, work / "scores_planted.parquet", truth),
            "distinct": (f"jsonl:{distinct}", work / "scores_distinct.parquet", None)}
    if a.demo_model:
        for name, (spec, _, t) in list(sets.items()):
            sets[f"{name}, demo model"] = (spec, work / f"scores_{name}_demo.parquet", t)
    for name, (spec, scores, _) in sets.items():
        if not scores.exists():
            score_source(spec, a.demo_model if "demo model" in name else ckpt, scores, progress=False)
    rows = {name: [run(spec, scores, work / "dedup" / name.replace(", ", "-").replace(" ", "_"), f, eps, t)
                   for f in (("model",) if "demo model" in name else ("pixels", "model")) for eps in RADII]
            for name, (spec, scores, t) in sets.items()}
    for name, rs in rows.items():
        for r in rs:
            print(name, json.dumps(r), flush=True)
    return truth, scorer, rows


def write_page(out: Path, a, truth: dict, scorer: dict, rows: dict) -> None:
    import torch

    flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in Path("/proc/cpuinfo").read_text()]
    lines = ["# De-duplication: the measured radius against fixed ones", "",
             f"`python bench/bench_dedup.py --score-steps {a.score_steps} --distinct {a.distinct} --seeds "
             f"{','.join(map(str, a.seeds))}"
             + (" --demo-model DEMO/runs/digits/final` (DEMO: the folder `clipforge demo --out DEMO` wrote; torch "
                if a.demo_model else "` (torch ")
             + f"{torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, CPU flags {', '.join(flags)}); "
             f"Nothing here is timed. Tables: seed {a.seeds[0]} (planted copies and scorer); every seed's rows and "
             "their mean ± sample std are in the JSON beside this page.", "",
             f"- planted set: {truth['n_b']} digits + {truth['n_copies']} planted copies "
             f"({', '.join(COPY_KINDS)}, one kind each in turn)",
             f"- distinct set: the first {a.distinct} training digits, no copies (every removal is wrong)",
             f"- model: the demo config trained {a.score_steps} steps on 250 other digits (zero-shot top-1 "
             f"{scorer['zeroshot_top1']:.3f}), a weak first model"
             + (f"; model (demo's): the model `clipforge demo` trains on all 1,437 training digits "
                f"(the README's case, `{a.demo_model}`)" if a.demo_model else ""),
             "- `auto`: 0.1 x the median cosine distance from an image to its 10th nearest neighbour, measured on "
             "the set itself (`clipforge.curate.radius`); the default when no eps is given",
             "- pixels: the 16x16 descriptor, and (with the grids the score job keeps) the same after aligning "
             "each image by one grid cell, 4x stricter (`clipforge.curate.shifted`)", ""]
    lines += ["## Planted copies", "",
              "| features | eps | radius used | removed | precision | recall | recall without shifts | "
              + " | ".join(COPY_KINDS) + " |", "|---" * (7 + len(COPY_KINDS)) + "|"]
    for r in rows["planted"] + [dict(r, features="model (demo's)") for r in rows.get("planted, demo model", [])]:
        if "error" in r:
            continue
        lines.append(f"| {r['features']} | {r['eps']} | {r['eps_used']:.4g} | {r['removed']} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['recall_without_shift']:.3f} | "
                     + " | ".join(f"{r['recall_by_kind'].get(k, 0):.2f}" for k in COPY_KINDS) + " |")
    lines += ["", "## No duplicates at all", "",
              "| features | eps | radius used | images removed (all wrong) | refused by the default `max_removed` 0.5 |",
              "|---|---|---|---|---|"]
    for r in rows["distinct"] + [dict(r, features="model (demo's)") for r in rows.get("distinct, demo model", [])]:
        if "error" not in r:
            lines.append(f"| {r['features']} | {r['eps']} | {r['eps_used']:.4g} | {r['removed']} of {a.distinct} | "
                         f"{'yes' if r['would_refuse'] else 'no'} |")
    out.write_text("\n".join(lines) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
