"""Curation on real pairs with the pretrained base: corrupt the emoji pairs at two rates, score them with a
lite0-minilm aligned on clean pairs of other concepts, filter, and align on raw vs curated pairs.

    python bench/bench_curation_pretrained.py [--work /tmp/cur-pre] [--rates 0.2,0.5] [--steps 500]
        [--out docs/bench_curation_pretrained.md]

1. Data: `clipforge data demo emoji` training pairs (2,658 images, 1,423 concepts, CLDR-name captions), split by
   concept (seeded): A (30% of concepts; 80% of its images align the scorer, 20% calibrate its threshold) and
   B (70%). In B, each image's captions are, with probability `rate`, replaced by the captions of an image of
   another concept (a mismatched pair, as scraped alt-text is).
2. Scoring: `clipforge.curate.score_source` with the scorer (heads aligned on A from a feature cache).
3. Threshold without B's ground truth: the score keeping 90% of A's clean held-out pairs
   (`quantile_threshold`); precision / recall of the mismatch filter there and the score's ROC AUC.
4. De-duplication (`dedup_source`, model embeddings, eps 0.05): removals, and how many fall within one concept
   (skin-tone variants of one emoji are near-duplicates by design).
5. Alignment on raw B and on curated B (same steps and seed, feature cache), zero-shot top-1 on the 475
   held-out concepts (never in A or B) with unseen prompts.
Figures are one seed per rate (each alignment builds its own feature cache).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def align(train_spec: str, emoji: dict, out: Path, steps: int, seed: int = 0) -> dict:
    from clipforge.train.config import load_config
    from clipforge.train.loop import train

    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    cfg = load_config("pretrained-align", [f"data.train={train_spec}", f"data.val=imagefolder:{emoji['val_dir']}",
                                           f"data.val_templates={emoji['templates_unseen']}", f"run.steps={steps}",
                                           f"run.checkpoint_every={steps}", "run.eval_every=0", f"run.seed={seed}",
                                           "run.progress=false", "data.batch_size=128"])
    return train(cfg, out)


def write(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{path}"


def main() -> None:
    from bench_curation import auc, filter_pr
    from common import add_common_args, fmt, publish, summarize, write_results
    from clipforge.curate import dedup_source, filter_source, quantile_threshold, read_removals, read_scores, score_source
    from clipforge.data.demo_emoji import build_emoji

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/clipforge-curation-pretrained")
    ap.add_argument("--rates", default="0.2,0.5")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--out", default=None)
    add_common_args(ap, seeds=(0,), seeds_help="training seeds of the raw and curated runs (the scorer and the "
                                               "corruption are seed 0)")
    a = ap.parse_args()
    work = Path(a.work)
    t_start, load0 = time.time(), os.getloadavg()
    emoji = build_emoji(str(work / "emoji"))
    rows = [json.loads(x) for x in Path(emoji["train_manifest"]).read_text().splitlines() if x.strip()]
    rng = np.random.default_rng(0)
    concepts = sorted({r["label"] for r in rows})
    in_a = set(rng.permutation(concepts)[: int(0.3 * len(concepts))].tolist())
    a_rows = [r for r in rows if r["label"] in in_a]
    b_rows = [r for r in rows if r["label"] not in in_a]
    cal = set(rng.permutation(len(a_rows))[: len(a_rows) // 5].tolist())
    a_train = write(work / "a_train.jsonl", [r for i, r in enumerate(a_rows) if i not in cal])
    a_cal = write(work / "a_cal.jsonl", [r for i, r in enumerate(a_rows) if i in cal])
    scorer = align(a_train, emoji, work / "scorer", a.steps)
    ckpt = str(work / "scorer" / "final")
    score_source(a_cal, ckpt, work / "scores_a_cal.parquet", progress=False, overwrite=True)
    clean_cal = np.array([s for s in read_scores(work / "scores_a_cal.parquet").column("score").to_pylist()
                          if s is not None])
    thr = quantile_threshold(clean_cal, 0.9)
    results = []
    for rate in [float(x) for x in a.rates.split(",")]:
        r_rng = np.random.default_rng([1, int(rate * 1000)])
        raw, wrong = [], set()
        for r in b_rows:
            r = dict(r)
            if r_rng.random() < rate:
                other = b_rows[int(r_rng.integers(len(b_rows)))]
                while other["label"] == r["label"]:
                    other = b_rows[int(r_rng.integers(len(b_rows)))]
                r["captions"] = list(other["captions"])
                wrong |= {(r["id"], c) for c in r["captions"]}
            raw.append(r)
        d = work / f"rate-{rate}"
        raw_spec = write(d / "b_raw.jsonl", raw)
        t0 = time.perf_counter()
        s = score_source(raw_spec, ckpt, d / "scores.parquet", progress=False, overwrite=True)
        score_s = time.perf_counter() - t0
        tb = read_scores(d / "scores.parquet")
        ids, caps, sc = (tb.column(c).to_pylist() for c in ("id", "caption", "score"))
        pos = np.array([v for i, c, v in zip(ids, caps, sc) if v is not None and (i, c) not in wrong])
        neg = np.array([v for i, c, v in zip(ids, caps, sc) if v is not None and (i, c) in wrong])
        pr = filter_pr(tb, wrong, thr)
        dd = dedup_source(raw_spec, d / "dedup.jsonl", scores=d / "scores.parquet", eps=0.05)
        rem = read_removals(dd["removals_file"])
        label = {r["id"]: r["label"] for r in raw}
        same = sum(1 for x in rem if label.get(x.get("duplicate_of") or x.get("of")) == label.get(x.get("id")))
        cur = filter_source(raw_spec, d / "scores.parquet", d / "curated.jsonl", min_score=thr)
        runs = {name: [align(spec, emoji, d / (name if seed == 0 else f"{name}-{seed}"), a.steps, seed)
                       ["final"].get("zeroshot_top1") for seed in a.seeds]  # seed 0 keeps the older folder name
                for name, spec in (("raw", raw_spec), ("curated", f"jsonl:{cur['out']}"))}
        res = {"rate": rate, "pairs": s.get("pairs"), "wrong_pairs": len(wrong), "score_s": round(score_s, 1),
               "auc": auc(pos, neg), **{f"filter_{k}": v for k, v in pr.items()},
               "dedup_removed": len(rem), "dedup_same_concept": same,
               "pairs_kept": cur.get("pairs_kept"), "samples_kept": cur.get("samples_kept"),
               "raw_top1": summarize(runs["raw"], a.seeds), "curated_top1": summarize(runs["curated"], a.seeds),
               "curated_minus_raw": summarize([c - r for r, c in zip(runs["raw"], runs["curated"])], a.seeds)}
        results.append(res)
        print(json.dumps(res), flush=True)
    L = ["# Curation on real pairs, pretrained base (emoji, lite0-minilm)", "",
         f"`python bench/bench_curation_pretrained.py --rates {a.rates} --steps {a.steps} --seeds "
         f"{','.join(map(str, a.seeds))}` ({platform.processor()}, "
         f"{os.cpu_count()} cores; load {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
         f"{(time.time() - t_start) / 60:.0f} min). Scorer: heads aligned on {len(a_rows) - len(cal)} clean pairs of "
         f"{len(in_a)} concepts (zero-shot top-1 {scorer['final'].get('zeroshot_top1', float('nan')):.3f} on the "
         f"held-out concepts); threshold {thr:.4f} keeps 90% of {len(cal)} clean calibration images' pairs.", "",
         "| corruption | mismatched pairs | score AUC | filter precision | filter recall | clean kept | "
         "pairs kept | dedup removals (same concept) | zero-shot top-1 raw | curated |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        L.append(f"| {r['rate']:.0%} | {r['wrong_pairs']} of {r['pairs']} | {r['auc']:.3f} | "
                 f"{r['filter_precision']:.3f} | {r['filter_recall']:.3f} | {r['filter_clean_kept']:.3f} | "
                 f"{r['pairs_kept']} | {r['dedup_removed']} ({r['dedup_same_concept']}) | {fmt(r['raw_top1'])} | "
                 f"{fmt(r['curated_top1'])} |")
    L += ["", f"Zero-shot: 475 concepts never in A or B, unseen prompts; training seeds {a.seeds} per cell (mean ± "
          "sample std when more than one)."]
    publish("\n".join(L) + "\n", a.out)
    write_results(a.out, {"bench": "curation_pretrained", "seeds": a.seeds, "steps": a.steps, "threshold": thr,
                          "results": results}, a.json)


if __name__ == "__main__":
    main()
