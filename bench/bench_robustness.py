"""Robustness of a trained demo model: zero-shot accuracy under PGD / FGSM per ε and common corruptions (issue 27).

    python bench/bench_robustness.py [--work DIR] [--run RUN_DIR] [--out docs/bench_robustness.md]

Trains the packaged `demo-digits` config (250 steps, as `clipforge demo` does; skipped with `--run` naming a
finished run), then runs the `robustness` eval task on the 360 held-out digits with the unseen templates:
PGD (10 steps, α = 2.5 ε / 10, random start, seed 0) and FGSM at ε = 1, 2, 4, 8 /255, and the eight
corruptions at severities 1..5. Also the `image-caption-selection` task on `data negatives` of the held-out
captions (replace-number: the digit's word swapped for another; shuffle). Writes a markdown table.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import add_common_args, fmt, summarize, write_results

EPSILONS = "1/255,2/255,4/255,8/255"


def train_demo(work: Path) -> Path:
    import yaml

    from clipforge.data.demo_sets import build_digits
    from clipforge.train.config import apply_overrides, config_from_dict, read_config_text
    from clipforge.train.loop import train

    digits = build_digits(str(work / "digits"))
    sets = [f"data.train=jsonl:{digits['train_manifest']}", f"data.val=imagefolder:{digits['val_dir']}",
            f"data.val_classnames={digits['classnames']}", f"data.val_templates={digits['templates_unseen']}",
            "run.progress=false", "run.eval_every=0"]
    cfg = config_from_dict(apply_overrides(yaml.safe_load(read_config_text("demo-digits")), sets)).validate()
    train(cfg, work / "run")
    return work / "run" / "final"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    ap.add_argument("--run", help="a trained demo-digits checkpoint (skips training)")
    ap.add_argument("--out", default="docs/bench_robustness.md")
    add_common_args(ap, seeds=(0,), seeds_help="seeds of PGD's random start and the corruption noise")
    args = ap.parse_args()

    from clipforge.data.demo_sets import build_digits
    from clipforge.data.negatives import write_negatives
    from clipforge.data.sources import open_source
    from clipforge.evaluate import run_eval

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-robustness-"))
    t0 = time.perf_counter()
    ckpt = Path(args.run) if args.run else train_demo(work)
    train_s = time.perf_counter() - t0
    digits = build_digits(str(work / "digits"))
    val = f"imagefolder:{digits['val_dir']}"
    common = dict(templates=digits["templates_unseen"], classnames=digits["classnames"], batch_size=120)
    per_seed = []
    for seed in args.seeds:
        recs = {}
        for attack in ("pgd", "fgsm"):
            t = time.perf_counter()
            recs[attack] = run_eval(str(ckpt), "robustness", val, attack=attack, epsilons=EPSILONS, seed=seed,
                                    **common)
            recs[attack]["bench_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        recs["corruptions"] = run_eval(str(ckpt), "robustness", val, attack="none", corruptions="all", seed=seed,
                                       **common)
        recs["corruptions"]["bench_s"] = round(time.perf_counter() - t, 1)
        per_seed.append(recs)
    recs = per_seed[0]
    neg = work / "digits-negatives.jsonl"
    write_negatives(open_source(f"jsonl:{digits['val_manifest']}"), neg, ["replace-number", "shuffle"],
                    overwrite=True, progress=False)
    sel = run_eval(str(ckpt), "image-caption-selection", str(neg))

    m_pgd, m_fgsm, m_c = ({m: summarize([r[k]["metrics"][m] for r in per_seed], args.seeds)["mean"]
                            for m in per_seed[0][k]["metrics"] if isinstance(per_seed[0][k]["metrics"][m], float)}
                           for k in ("pgd", "fgsm", "corruptions"))
    m_pgd["n"] = recs["pgd"]["metrics"]["n"]
    spread = {k: fmt(summarize([r[k]["metrics"]["robust_top1@4/255"] for r in per_seed], args.seeds))
              for k in ("pgd", "fgsm")}
    eps = ["0"] + EPSILONS.split(",")
    key = ["clean_top1"] + [f"robust_top1@{e}" for e in EPSILONS.split(",")]
    lines = ["# Robustness of the trained digits demo model (issue 27)", "",
             f"`python bench/bench_robustness.py` — the packaged `demo-digits` config ({'given run' if args.run else f'trained here in {train_s:.0f} s'}),"
             f" zero-shot head from the unseen templates, {m_pgd['n']} held-out digits; "
             f"PGD: 10 steps, α = 2.5 ε / 10, random start; FGSM: one step. ε in [0, 1] pixel units. Mean over "
             f"seeds {','.join(map(str, args.seeds))} (robust top-1 at ε 4/255: PGD {spread['pgd']}, FGSM "
             f"{spread['fgsm']}).", "",
             "| ε | " + " | ".join(eps) + " |", "|---|" + "---:|" * len(eps),
             "| PGD top-1 | " + " | ".join(f"{m_pgd[k]:.3f}" for k in key) + " |",
             "| FGSM top-1 | " + " | ".join(f"{m_fgsm[k]:.3f}" for k in key) + " |", "",
             "| corruption | " + " | ".join(f"s{s}" for s in range(1, 6)) + " | mean |", "|---|" + "---:|" * 6]
    names = sorted({k.split("/")[1].split("@")[0] for k in m_c if k.startswith("corruption_top1/")})
    for c in names:
        lines.append(f"| {c} | " + " | ".join(f"{m_c[f'corruption_top1/{c}@{s}']:.3f}" for s in range(1, 6))
                     + f" | {m_c[f'corruption_top1/{c}']:.3f} |")
    lines += ["", f"Clean top-1 {m_c['clean_top1']:.3f}; mean corruption accuracy {m_c['mean_corruption_top1']:.3f}; "
              f"relative drop {m_c['relative_drop']:.3f}.", "",
              f"Hard negatives of the held-out captions (`data negatives --kinds replace-number,shuffle`): "
              f"{sel['metrics']['n']} instances, accuracy {sel['metrics']['acc']:.3f} (replace-number "
              f"{sel['metrics'].get('acc/replace-number', float('nan')):.3f}, shuffle "
              f"{sel['metrics'].get('acc/shuffle', float('nan')):.3f}; chance 0.5).", "",
              f"Times: PGD {recs['pgd']['bench_s']} s, FGSM {recs['fgsm']['bench_s']} s, corruptions "
              f"{recs['corruptions']['bench_s']} s (2 CPU cores)."]
    from clipforge.atomic import atomic_write_text

    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))
    write_results(args.out, {"seeds": args.seeds, "per_seed": per_seed, "selection": sel}, args.json)


if __name__ == "__main__":
    main()
