"""The digits learning benchmark: train the packaged demo-digits config from scratch and record zero-shot accuracy on
held-out digits with unseen templates, against training wall time (the issue's bar: >= 90% within 3 min).

    python bench/bench_demo_learning.py --out docs/bench_learning.md [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))


def one_run(work: Path, seed: int, extra) -> dict:
    import yaml

    from clipforge.data.demo_sets import build_digits
    from clipforge.train.config import apply_overrides, config_from_dict, read_config_text
    from clipforge.train.loop import train

    digits = build_digits(str(work / "digits"))
    sets = [f"data.train=jsonl:{digits['train_manifest']}", f"data.val=imagefolder:{digits['val_dir']}",
            f"data.val_classnames={digits['classnames']}", f"data.val_templates={digits['templates_unseen']}",
            f"run.seed={seed}", "run.progress=false"] + list(extra)
    cfg = config_from_dict(apply_overrides(yaml.safe_load(read_config_text("demo-digits")), sets)).validate()
    t0 = time.perf_counter()
    summary = train(cfg, work / f"run-{seed}")
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (work / f"run-{seed}" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["zeroshot_top1"]) for r in rows if "zeroshot_top1" in r]
    return {"seed": seed, "steps": summary["steps"], "train_time_s": summary["train_time_s"],
            "wall_s": round(wall, 1), "zeroshot_top1": curve[-1][1] if curve else None, "curve": curve}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_run(Path(tmp), seed, a.set) for seed in range(a.repeats)]
    for r in runs:
        print(json.dumps(r))
    lines = ["| seed | steps | training time (s) | wall incl. evals (s) | zero-shot top-1 (unseen templates) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['steps']} | {r['train_time_s']} | {r['wall_s']} | {r['zeroshot_top1']:.3f} |"
              for r in runs]
    curve = " → ".join(f"{s}: {acc:.3f}" for s, acc in runs[0]["curve"])
    text = (f"# Learning benchmark: digits demo\n\n`python bench/bench_demo_learning.py` (torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; overrides: {a.set or 'none'})\n\n" + "\n".join(lines)
            + f"\n\nZero-shot top-1 by step (seed 0): {curve}\n")
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
