"""Curation, measured: corrupt the digits demo on purpose, curate it with clipforge.curate, and train on both.

    python bench/bench_curation.py --work /tmp/curbench --out docs/bench_curation.md [--steps 200] [--seeds 0,1,2]
    python bench/bench_curation.py --work /tmp/curcurve --p-wrong 0.1 0.2 0.4 0.6 0.7 --steps 100 --out page.md

1. Data. The digits demo (1,437 training images x 6 captions, 360 held-out validation digits) is split once
   (seeded): set A (300 images, clean captions) trains the scoring model (250) and calibrates its threshold
   (50 held out); set B (the other 1,137) is corrupted: each caption independently, with probability 0.4,
   is replaced by a caption of an image of another digit (a mismatched pair, as web alt-text is), and 15% of
   B's images get a planted copy (exact byte copy, PNG re-save with the same pixels, up-scaled 32->48,
   down-scaled 32->24, JPEG q=85, shifted one pixel) that carries the original's captions.
2. Scoring. The demo config is trained on A's 250 images (`--score-steps`, seed 0), then
   `clipforge.curate.score_source` scores every pair of corrupted B, and of A's 50 held-out images.
3. Threshold, chosen without B's ground truth: the score that keeps 90% of the clean held-out pairs of A
   (`quantile_threshold(clean, 0.9)`). Precision / recall of the mismatch filter are recorded at that
   threshold and at several keep-top fractions, with the ROC AUC of the score as a mismatch detector.
4. De-duplication: `dedup_source` (exact bytes + pixels, then near-duplicates at several eps, model
   embeddings and the pixel descriptor); precision / recall against the planted copies, per copy type.
5. Training: the demo config on raw B (corrupted, with copies) and on curated B (dedup removals applied in
   the filter pass), for the same number of steps and seeds; zero-shot top-1 on the 360 held-out digits
   with unseen templates.

Stages are cached in --work, so a rerun only does what is missing (delete a file to redo its stage). Several
--p-wrong rates give a curve: each rate in --work/p-wrong-RATE (set A, and so the scoring model, is the same at
every rate: the first rate's scorer is reused), one page with a row per rate and the raw JSON beside it.
The seeds are the training seeds of the raw / curated runs (paired: same seed, same steps); the split, the
corruption and the scorer are seed 0.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common import add_common_args, fmt, machine, publish, summarize, write_results

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))

COPY_KINDS = ("bytes", "pixels", "upscale", "downscale", "jpeg", "shift")


def load_jsonl(p) -> list[dict]:
    return [json.loads(x) for x in Path(p).read_text().splitlines() if x.strip()]


def write_jsonl(p, rows) -> None:
    Path(p).write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_sets(work: Path, digits: dict, seed: int, p_wrong: float, dup_frac: float) -> dict:
    """A (clean: train + calibration) and B (corrupted + planted copies) manifests, and B's ground truth."""
    from PIL import Image

    out = work / "sets"
    truth_path = out / "truth.json"
    if truth_path.exists():
        return json.loads(truth_path.read_text())
    if out.exists():
        shutil.rmtree(out)
    (out / "copies").mkdir(parents=True)
    root = Path(digits["root"])
    rows = load_jsonl(digits["train_manifest"])
    for r in rows:
        r["image"] = str(root / r["image"])
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    a_idx, b_idx = sorted(order[:300]), sorted(order[300:])
    a_train, a_cal = [rows[i] for i in a_idx[:250]], [rows[i] for i in a_idx[250:]]
    b = [dict(rows[i], captions=list(rows[i]["captions"])) for i in b_idx]
    by_label: dict[int, list[str]] = {}
    for r in b:
        by_label.setdefault(r["label"], []).extend(r["captions"])
    wrong = []  # [id, caption] of every corrupted pair
    for r in b:
        caps = []
        for c in r["captions"]:
            if rng.random() < p_wrong:
                other = rng.choice([d for d in range(10) if d != r["label"]])
                new = rng.choice(by_label[other])
                while new in caps or new in r["captions"]:
                    new = rng.choice(by_label[other])
                caps.append(new)
                wrong.append([r["id"], new])
            else:
                caps.append(c)
        r["captions"] = caps
    originals = rng.sample(range(len(b)), int(round(dup_frac * len(b))))
    copies = []
    for n, i in enumerate(sorted(originals)):
        r = b[i]
        kind = COPY_KINDS[n % len(COPY_KINDS)]
        im = Image.open(r["image"])
        dst = out / "copies" / f"copy-{n:04d}.{'jpg' if kind == 'jpeg' else 'png'}"
        if kind == "bytes":
            shutil.copyfile(r["image"], dst)
        elif kind == "pixels":
            from PIL import PngImagePlugin
            meta = PngImagePlugin.PngInfo()
            meta.add_text("comment", "re-saved")
            im.save(dst, compress_level=1, pnginfo=meta)
        elif kind == "upscale":
            im.resize((48, 48), Image.BICUBIC).save(dst)
        elif kind == "downscale":
            im.resize((24, 24), Image.LANCZOS).save(dst)
        elif kind == "jpeg":
            im.convert("L").save(dst, quality=85)
        else:
            arr = np.asarray(im)
            Image.fromarray(np.roll(arr, 1, axis=1)).save(dst)
        copies.append({"id": f"copy-{n:04d}", "image": str(dst), "captions": list(r["captions"]),
                       "label": r["label"], "_of": r["id"], "_kind": kind})
    b_all = b + [{k: v for k, v in c.items() if not k.startswith("_")} for c in copies]
    rng.shuffle(b_all)  # copies are not at the end: the keep rule sees them anywhere
    write_jsonl(out / "a_train.jsonl", a_train)
    write_jsonl(out / "a_cal.jsonl", a_cal)
    write_jsonl(out / "b_raw.jsonl", b_all)
    truth = {"wrong": wrong, "copies": [{"id": c["id"], "of": c["_of"], "kind": c["_kind"]} for c in copies],
             "n_a_train": len(a_train), "n_a_cal": len(a_cal), "n_b": len(b), "n_copies": len(copies),
             "pairs_b": sum(len(r["captions"]) for r in b_all), "p_wrong": p_wrong, "dup_frac": dup_frac,
             "paths": {k: str(out / f"{k}.jsonl") for k in ("a_train", "a_cal", "b_raw")}}
    truth_path.write_text(json.dumps(truth))
    return truth


def train_run(train_spec: str, digits: dict, run_dir: Path, seed: int, steps: int, threads: int = 0) -> dict:
    import yaml

    from clipforge.train.config import apply_overrides, config_from_dict, read_config_text
    from clipforge.train.loop import train

    done = run_dir / "summary.json"
    if done.exists():
        s = json.loads(done.read_text())
        return {"seed": seed, "steps": s["steps"], "zeroshot_top1": s["final"].get("zeroshot_top1"),
                "train_time_s": s["train_time_s"], "cached": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    sets = [f"data.train={train_spec}", f"data.val=imagefolder:{digits['val_dir']}",
            f"data.val_classnames={digits['classnames']}", f"data.val_templates={digits['templates_unseen']}",
            f"run.seed={seed}", f"run.steps={steps}", f"run.eval_every={steps}", f"run.checkpoint_every={steps}",
            "run.progress=false"] + ([f"run.threads={threads}"] if threads else [])
    cfg = config_from_dict(apply_overrides(yaml.safe_load(read_config_text("demo-digits")), sets)).validate()
    s = train(cfg, run_dir)
    return {"seed": seed, "steps": s["steps"], "zeroshot_top1": s["final"].get("zeroshot_top1"),
            "train_time_s": s["train_time_s"], "cached": False}


def run_jobs(jobs: list, parallel: int, timeout: float):
    """Yield (name, train_run(*args)) for each (name, args) in order. One at a time in this process when
    `parallel` <= 1; otherwise in `parallel` *spawned* processes (a forked child of a process whose torch /
    OpenMP threads have started can deadlock: this bench once sat at 0% CPU for 43 minutes), each result waited
    for at most `timeout` s — a stuck worker is an error, never a silent wait."""
    if parallel <= 1:
        for name, args in jobs:
            yield name, train_run(*args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, TimeoutError as FutureTimeout

    pool = ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn"))
    try:
        futs = [(name, pool.submit(train_run, *args)) for name, args in jobs]
        for name, fut in futs:
            try:
                yield name, fut.result(timeout=timeout)
            except FutureTimeout:
                raise SystemExit(f"bench_curation: a {name} training run gave no result in {timeout:.0f} s "
                                 "(--job-timeout): stopped") from None
    except BaseException:
        for p in list((getattr(pool, "_processes", None) or {}).values()):  # a stuck worker must not outlive us
            p.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random clean pair > score of a random mismatched pair) (ties count half)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def filter_pr(table, wrong: set, threshold: float) -> dict:
    ids, caps, sc = (table.column(c).to_pylist() for c in ("id", "caption", "score"))
    tp = fp = fn = tn = 0
    for i, c, s in zip(ids, caps, sc):
        if s is None:
            continue
        bad, removed = (i, c) in wrong, s < threshold
        tp += bad and removed
        fp += removed and not bad
        fn += bad and not removed
        tn += not bad and not removed
    return {"threshold": round(threshold, 4), "removed": tp + fp, "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "clean_kept": tn / max(tn + fp, 1)}


def dedup_pr(removals: list[dict], truth: dict) -> dict:
    """Precision: removals whose duplicate_of is the same planted group; recall per copy kind."""
    group = {}
    for c in truth["copies"]:
        group[c["id"]] = c["of"]
        group[c["of"]] = c["of"]
    right = sum(1 for r in removals if group.get(r["id"]) is not None and group.get(r["id"]) == group.get(r["duplicate_of"]))
    found = {}
    pairs = {(r["id"], r["duplicate_of"]) for r in removals}
    for c in truth["copies"]:
        hit = (c["id"], c["of"]) in pairs or (c["of"], c["id"]) in pairs
        found.setdefault(c["kind"], []).append(hit)
    rec = {k: sum(v) / len(v) for k, v in found.items()}
    return {"removed": len(removals), "precision": right / max(len(removals), 1),
            "recall": sum(sum(v) for v in found.values()) / max(len(truth["copies"]), 1), "recall_by_kind": rec}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/clipforge-curation-bench")
    ap.add_argument("--out", default=None, help="markdown results page to write")
    ap.add_argument("--steps", type=int, default=200, help="training steps of each raw / curated run")
    ap.add_argument("--score-steps", type=int, default=150, help="training steps of the scoring model")
    ap.add_argument("--p-wrong", type=float, nargs="+", default=[0.4],
                    help="share of corrupted captions; several rates: one curve (default 0.4)")
    ap.add_argument("--dup-frac", type=float, default=0.15)
    ap.add_argument("--keep-clean", type=float, default=0.9, help="threshold keeps this fraction of clean pairs")
    ap.add_argument("--eps", type=float, default=0.02, help="near-duplicate eps of the curated training set")
    ap.add_argument("--features", default="pixels", choices=["model", "pixels"],
                    help="near-duplicate features of the curated training set")
    ap.add_argument("--runs", default="raw,curated",
                    help="which training runs this call does (raw, curated, both, or '' for none); runs finished "
                         "by earlier calls with the same --work are reported too")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--parallel", type=int, default=1,
                    help="training runs at once (each with --threads torch threads); results do not depend on it")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per training run (0: torch's default)")
    ap.add_argument("--job-timeout", type=float, default=3600.0,
                    help="seconds to wait for each training run with --parallel > 1 before failing (default 3600)")
    add_common_args(ap, seeds_help="training seeds of the raw and curated runs")
    a = ap.parse_args()
    t_start, load0 = time.time(), os.getloadavg()
    rates, out = a.p_wrong, {}
    for i, rate in enumerate(rates):
        work = Path(a.work) if len(rates) == 1 else Path(a.work) / f"p-wrong-{rate:g}"
        if i and not (work / "scorer" / "summary.json").exists():  # set A does not depend on the rate
            prev = Path(a.work) / f"p-wrong-{rates[0]:g}" / "scorer"
            if (prev / "summary.json").exists():
                shutil.copytree(prev, work / "scorer", dirs_exist_ok=True)
        out[rate] = run_rate(a, work, rate)
    if any(r is None for r in out.values()):
        return  # --runs raw: training only
    load1 = os.getloadavg()
    wall = time.time() - t_start
    if len(rates) == 1:
        report = render(a, *out[rates[0]]["render"], load0, load1, wall)
    else:
        report = render_curve(a, out, load0, load1, wall)
    publish(report, a.out)
    write_results(a.out, {"bench": "curation", "seeds": a.seeds, "steps": a.steps, "score_steps": a.score_steps,
                          "keep_clean": a.keep_clean, "rates": {f"{k:g}": v["json"] for k, v in out.items()},
                          "wall_s": round(wall), "machine": machine()}, a.json)


def run_rate(a, work: Path, p_wrong: float):
    """Everything at one corruption rate: sets, scorer, scores, filter, dedup, raw / curated training runs.
    Returns {"render": render()'s arguments, "json": the raw results}; None with `runs` 'raw' (training only)."""
    from clipforge.curate import (dedup_source, estimate_mismatch_rate, filter_source, quantile_threshold,
                                  read_removals, read_scores, score_source)
    from clipforge.data.demo_sets import build_digits

    work.mkdir(parents=True, exist_ok=True)
    digits = build_digits(str(work / "digits"))
    truth = make_sets(work, digits, 0, p_wrong, a.dup_frac)
    paths = truth["paths"]
    wrong = {tuple(x) for x in truth["wrong"]}
    of = {c["id"]: c["of"] for c in truth["copies"]}
    wrong_of: dict[str, list[str]] = {}
    for i, cap in wrong:
        wrong_of.setdefault(i, []).append(cap)
    wrong |= {(cid, cap) for cid, o in of.items() for cap in wrong_of.get(o, [])}  # copies carry their captions
    truth["n_wrong"] = len(wrong)
    print(f"sets: A {truth['n_a_train']} + {truth['n_a_cal']} clean, B {truth['n_b']} + {truth['n_copies']} copies, "
          f"{truth['n_wrong']} of {truth['pairs_b']} pairs mismatched", flush=True)

    if a.runs == "raw" and not a.skip_training:  # raw runs need no scoring: start them while the scorer trains
        jobs = [("raw", (f"jsonl:{paths['b_raw']}", digits, work / "runs" / f"raw-{seed}", seed, a.steps, a.threads))
                for seed in a.seeds]
        for name, r in run_jobs(jobs, a.parallel, a.job_timeout):
            print(name, r, flush=True)
        return None
    # 2. the scoring model and the scores
    scorer = train_run(f"jsonl:{paths['a_train']}", digits, work / "scorer", 0, a.score_steps, a.threads)
    print("scorer:", scorer, flush=True)
    ckpt = str(work / "scorer" / "final")
    t0 = time.perf_counter()
    s_b = score_source(f"jsonl:{paths['b_raw']}", ckpt, work / "scores_b.parquet", progress=False,
                       pixel_features=True)
    score_s = time.perf_counter() - t0
    score_source(f"jsonl:{paths['a_cal']}", ckpt, work / "scores_a_cal.parquet", progress=False)
    tb, ta = read_scores(work / "scores_b.parquet"), read_scores(work / "scores_a_cal.parquet")

    # 3. the mismatch filter
    clean_cal = np.array([s for s in ta.column("score").to_pylist() if s is not None])
    thr = quantile_threshold(clean_cal, a.keep_clean)
    ids, caps, sc = (tb.column(c).to_pylist() for c in ("id", "caption", "score"))
    pos = np.array([s for i, c, s in zip(ids, caps, sc) if s is not None and (i, c) not in wrong])
    neg = np.array([s for i, c, s in zip(ids, caps, sc) if s is not None and (i, c) in wrong])
    pr_main = filter_pr(tb, wrong, thr)
    est = estimate_mismatch_rate([s for s in sc if s is not None], clean_cal, a.keep_clean)  # no ground truth used
    pr_top = [dict(filter_pr(tb, wrong, quantile_threshold(pos.tolist() + neg.tolist(), f)), keep_top=f)
              for f in (0.5, 0.6, 0.7, 0.8)]
    print("filter:", pr_main, flush=True)

    # 4. de-duplication at several eps, both features
    dd = {}
    for feats in ("model", "pixels"):
        for eps in (0.01, 0.02, 0.05, 0.1):
            o = work / "dedup" / f"{feats}-{eps}.jsonl"
            done = o.with_suffix(".summary.json")
            res = (json.loads(done.read_text()) if done.exists() else  # cached: delete it to redo
                   dedup_source(f"jsonl:{paths['b_raw']}", o, scores=work / "scores_b.parquet", eps=eps,
                                features=feats, max_removed=1.0))  # measured at every eps, however much
            rem = read_removals(res["removals_file"])
            exact = [r for r in rem if "exact_duplicate" in r["reasons"]]
            dd[(feats, eps)] = {"all": dedup_pr(rem, truth), "exact": dedup_pr(exact, truth),
                                "summary": res}
            print("dedup", feats, eps, dd[(feats, eps)]["all"], flush=True)

    # 5. curated set: dedup removals applied in the filter pass
    dsel = work / "dedup" / f"{a.features}-{a.eps}.removals.jsonl"
    cur = filter_source(f"jsonl:{paths['b_raw']}", work / "scores_b.parquet", work / "curated" / "b_curated.jsonl",
                        min_score=thr, also_remove=[str(dsel)])
    print("curated:", {k: cur[k] for k in ("samples_kept", "pairs_kept", "removed_by_reason")}, flush=True)
    runs = {"raw": [], "curated": []}
    seeds = a.seeds
    specs = {"raw": f"jsonl:{paths['b_raw']}", "curated": f"jsonl:{cur['out']}"}
    train_now = [] if a.skip_training else [x for x in a.runs.split(",") if x]
    for name in specs:  # runs not trained by this call count when an earlier call finished them
        if name not in train_now:
            for seed in seeds:
                if (work / "runs" / f"{name}-{seed}" / "summary.json").exists():
                    runs[name].append(train_run(specs[name], digits, work / "runs" / f"{name}-{seed}", seed,
                                                a.steps))
    if train_now:
        jobs = [(name, (specs[name], digits, work / "runs" / f"{name}-{seed}", seed, a.steps, a.threads))
                for seed in seeds for name in specs if name in train_now]
        for name, r in run_jobs(jobs, a.parallel, a.job_timeout):
            runs[name].append(r)
            print(name, r, flush=True)
    roc = auc(pos, neg)
    by_seed = {name: {r["seed"]: r for r in rs} for name, rs in runs.items()}
    both = sorted(set(by_seed["raw"]) & set(by_seed["curated"]))  # equal steps, same seeds: paired
    top1 = {name: summarize([by_seed[name][s]["zeroshot_top1"] for s in both], both) for name in runs} if both else {}
    if both:
        top1["curated - raw"] = summarize([by_seed["curated"][s]["zeroshot_top1"] - by_seed["raw"][s]["zeroshot_top1"]
                                           for s in both], both)
    raw_json = {"p_wrong": p_wrong, "pairs": truth["pairs_b"], "mismatched_pairs": truth["n_wrong"],
                "copies": truth["n_copies"], "scorer_top1": scorer["zeroshot_top1"], "threshold": thr,
                "auc": roc, "estimated_mismatch_rate": est["rate"], "filter": pr_main, "keep_top": pr_top,
                "dedup": {f"{f} eps={e}": {k: v["all"][k] for k in ("removed", "precision", "recall")}
                          for (f, e), v in dd.items()},
                "curated": {k: cur[k] for k in ("samples_kept", "pairs_kept", "removed_by_reason")},
                "runs": runs, "zeroshot_top1": top1}
    return {"render": (truth, scorer, score_s, s_b, thr, pr_main, pr_top, roc, pos, neg, dd, cur, runs),
            "json": raw_json}


def render_curve(a, out: dict, load0, load1, wall) -> str:
    """One row per corruption rate: the filter at the calibrated threshold and the paired training result."""
    import torch

    rates = " ".join(f"{r:g}" for r in out)
    L = ["# Curation benchmark: curated vs raw over corruption rates\n",
         f"`python bench/bench_curation.py --p-wrong {rates} --steps {a.steps} --score-steps {a.score_steps} "
         f"--seeds {','.join(map(str, a.seeds))} --threads {a.threads}` (torch {torch.__version__}, "
         f"{platform.machine()}, {os.cpu_count()} cores; load average {load0[0]:.1f} at the start, {load1[0]:.1f} "
         f"at the end: the machine was shared; {wall / 60:.0f} min in this call, cached stages not counted).\n",
         "Per rate: set B's captions corrupted at that rate (15% planted copies as always), the same scoring model "
         f"(trained on clean set A, seed 0), the threshold that keeps {a.keep_clean:.0%} of A's clean held-out "
         "pairs, de-duplication applied in the filter pass; raw and curated B then train the demo config for "
         f"{a.steps} steps from the same seeds. Top-1: zero-shot on the 360 held-out digits, unseen templates, mean "
         "± sample std over the seeds; curated − raw is paired by seed. Estimated: "
         "`clipforge.curate.estimate_mismatch_rate` from the scores and A's clean held-out scores alone.\n",
         "| corrupted pairs | estimated (no ground truth) | pairs removed by the filter | precision | recall | "
         "clean pairs kept | pairs kept | raw top-1 | curated top-1 | curated − raw | seeds curated > raw |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for rate, r in out.items():
        j, f = r["json"], r["json"]["filter"]
        t = j["zeroshot_top1"]
        if not t:
            continue
        d = t["curated - raw"]
        wins = sum(v > 0 for v in d["values"])
        L.append(f"| {j['mismatched_pairs'] / j['pairs']:.1%} (p {rate:g}) | {j['estimated_mismatch_rate']:.1%} | "
                 f"{f['removed']} | {f['precision']:.3f} | "
                 f"{f['recall']:.3f} | {f['clean_kept']:.3f} | {j['curated']['pairs_kept']} of {j['pairs']} | "
                 f"{fmt(t['raw'], seeds=False)} | {fmt(t['curated'], seeds=False)} | **{d['mean']:+.3f}**"
                 + (f" ± {d['std']:.3f}" if d["std"] is not None else "") + f" | {wins} of {d['n']} |")
    L += ["", "Per seed (raw → curated):", ""]
    for rate, r in out.items():
        runs = {name: {x["seed"]: x["zeroshot_top1"] for x in rs} for name, rs in r["json"]["runs"].items()}
        L.append(f"- p {rate:g}: " + ", ".join(f"seed {s} {runs['raw'][s]:.3f} → {runs['curated'][s]:.3f}"
                                                for s in sorted(set(runs["raw"]) & set(runs["curated"]))))
    return "\n".join(L) + "\n"


def render(a, truth, scorer, score_s, s_b, thr, pr_main, pr_top, roc, pos, neg, dd, cur, runs, load0, load1,
           wall) -> str:
    import torch

    L = [f"# Curation benchmark: corrupted digits, curated vs raw\n",
         f"`python bench/bench_curation.py --steps {a.steps} --score-steps {a.score_steps} --seeds "
         f"{','.join(map(str, a.seeds))} --p-wrong {a.p_wrong[0]:g} --parallel {a.parallel} --threads {a.threads}` "
         f"(torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores; load average "
         f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end: the machine was shared; total {wall / 60:.0f} min)\n",
         "## Data",
         f"- clean set A: {truth['n_a_train']} images train the scoring model ({a.score_steps} steps of the demo "
         f"config, seed 0: zero-shot top-1 {scorer['zeroshot_top1']:.3f} on the held-out digits), "
         f"{truth['n_a_cal']} held-out images calibrate its threshold",
         f"- corrupted set B: {truth['n_b']} images + {truth['n_copies']} planted copies "
         f"({', '.join(COPY_KINDS)}; equal numbers), {truth['pairs_b']} pairs of which {truth['n_wrong']} "
         f"({truth['n_wrong'] / truth['pairs_b']:.1%}) have a caption of another digit",
         f"- scoring B: {s_b['pairs']} pairs of {s_b['samples']} images in {score_s:.1f} s "
         f"(tiny model, fp32; captions dominate: 6 per image)\n",
         "## Mismatched-caption filter",
         f"Scores of clean pairs {np.mean(pos):.3f} ± {np.std(pos):.3f}, of mismatched pairs {np.mean(neg):.3f} ± "
         f"{np.std(neg):.3f}; ROC AUC of the score as a mismatch detector **{roc:.3f}**.\n",
         f"Threshold chosen without B's ground truth: the score keeping {a.keep_clean:.0%} of A's clean held-out "
         f"pairs = **{thr:.4f}**.\n",
         "| rule | threshold | pairs removed | precision (removed that were mismatched) | recall (mismatched removed) "
         "| clean pairs kept |", "|---|---|---|---|---|---|",
         f"| keep {a.keep_clean:.0%} of clean calibration pairs | {pr_main['threshold']} | {pr_main['removed']} | "
         f"**{pr_main['precision']:.3f}** | **{pr_main['recall']:.3f}** | {pr_main['clean_kept']:.3f} |"]
    L += [f"| keep_top {r['keep_top']} | {r['threshold']} | {r['removed']} | {r['precision']:.3f} | {r['recall']:.3f} "
          f"| {r['clean_kept']:.3f} |" for r in pr_top]
    L += ["", "## De-duplication (planted copies)",
          "Exact steps (bytes hash, then pixel hash) are the same for every row; near-duplicates at each eps "
          "with the scoring model's image embeddings or the model-free pixel descriptor. Precision: removals whose "
          "`duplicate_of` is the same planted pair; recall: planted copies found (per kind).\n",
          "| features | eps | removed | precision | recall | " + " | ".join(COPY_KINDS) + " |",
          "|---|---|---|---|---|" + "---|" * len(COPY_KINDS)]
    for (feats, eps), v in dd.items():
        r = v["all"]
        L.append(f"| {feats} | {eps} | {r['removed']} | {r['precision']:.3f} | {r['recall']:.3f} | "
                 + " | ".join(f"{r['recall_by_kind'].get(k, 0):.2f}" for k in COPY_KINDS) + " |")
    ex = next(iter(dd.values()))["exact"]
    L += ["", f"Exact de-duplication alone: {ex['removed']} removed, precision {ex['precision']:.3f}, recall on "
          f"byte copies {ex['recall_by_kind'].get('bytes', 0):.2f} and pixel copies "
          f"{ex['recall_by_kind'].get('pixels', 0):.2f}.", ""]
    L += ["## Training on raw vs curated data",
          f"Curated = B filtered at {thr:.4f} with the de-duplication removals ({a.features} features, eps {a.eps}) "
          f"applied in the same pass: {cur['samples_kept']} images, {cur['pairs_kept']} pairs (raw: "
          f"{truth['n_b'] + truth['n_copies']} images, {truth['pairs_b']} pairs); samples removed by reason "
          f"{json.dumps(cur['removed_by_reason'])}.",
          f"Both train the demo config for {a.steps} steps (batch 128) from the same seeds; zero-shot top-1 on the "
          "360 held-out digits with unseen templates.\n"]
    by_seed = {name: {r["seed"]: r for r in rs} for name, rs in runs.items()}
    both = sorted(set(by_seed["raw"]) & set(by_seed["curated"]))  # equal steps, same seeds: paired
    if both:
        L += ["| seed | raw | curated | curated − raw |", "|---|---|---|---|"]
        for seed in both:
            r, c = by_seed["raw"][seed], by_seed["curated"][seed]
            L.append(f"| {seed} | {r['zeroshot_top1']:.3f} | {c['zeroshot_top1']:.3f} | "
                     f"{c['zeroshot_top1'] - r['zeroshot_top1']:+.3f} |")
        raw = np.array([by_seed["raw"][s]["zeroshot_top1"] for s in both])
        curd = np.array([by_seed["curated"][s]["zeroshot_top1"] for s in both])
        L.append(f"| mean ± sd | {raw.mean():.3f} ± {raw.std(ddof=1) if len(raw) > 1 else 0:.3f} | "
                 f"{curd.mean():.3f} ± {curd.std(ddof=1) if len(curd) > 1 else 0:.3f} | "
                 f"{(curd - raw).mean():+.3f} (min {(curd - raw).min():+.3f}) |")
        L.append("\nTraining time per run (s; the machine was shared, so these are not speed figures): raw "
                 + ", ".join(str(by_seed["raw"][s]["train_time_s"]) for s in both) + "; curated "
                 + ", ".join(str(by_seed["curated"][s]["train_time_s"]) for s in both) + ".")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
