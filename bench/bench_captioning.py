"""Does the tiny CoCa learn to caption? Train `coca-tiny` on the digits demo with the packaged config
(`coca-digits`: contrastive + 2 x caption loss) and, at equal steps, the same model with the contrastive loss
alone; caption held-out digits at every checkpoint and score them (BLEU-4, CIDEr-D) against references.

    .venv/bin/python bench/bench_captioning.py --steps 400 --out /tmp/bench_captioning

Held-out references: each validation digit gets the 16 training templates filled with its name, once with
the word ("seven") and once with the numeral ("7"): 32 references per image, so a caption is right when it
names the digit in any of the trained phrasings. Step 0 is the untrained model (same tokenizer, random init).
Writes results.json (metrics per step, zero-shot accuracy of both runs, example captions) under --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import add_common_args, write_results
from clipforge.data.demo_sets import DIGIT_NAMES, TRAIN_TEMPLATES, build_digits
from clipforge.encode.captioner import Captioner
from clipforge.evaluate.captioning import evaluate_captioning
from clipforge.models import build_model, load_model
from clipforge.train.config import load_config
from clipforge.train.loop import train


def _references(digits: dict, out: Path, n: int) -> str:
    rows = [json.loads(x) for x in Path(digits["val_manifest"]).read_text().splitlines()][:n]
    root = Path(digits["val_manifest"]).parent
    lines = []
    for r in rows:
        refs = [t.format(c=w) for t in TRAIN_TEMPLATES for w in (DIGIT_NAMES[r["label"]], str(r["label"]))]
        lines.append(json.dumps({"id": r["id"], "image": str(root / r["image"]), "captions": refs,
                                 "label": r["label"]}))
    path = out / "heldout_refs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return f"jsonl:{path}"


def _run(name: str, digits: dict, out: Path, steps: int, loss: str, batch: int, seed: int = 0) -> Path:
    run = out / name
    if (run / "summary.json").is_file():
        return run
    sets = [f"data.train=jsonl:{digits['train_manifest']}", f"data.val=imagefolder:{digits['val_dir']}",
            f"data.val_classnames={digits['classnames']}", f"data.val_templates={digits['templates_unseen']}",
            f"run.steps={steps}", "run.progress=false", f"loss.name={loss}", "run.checkpoint_every=100",
            "run.keep_checkpoints=20", "run.eval_every=100", f"data.batch_size={batch}", f"run.seed={seed}"]
    if loss != "coca":
        sets.append("loss.options={}")
    cfg = load_config("coca-digits", sets)
    t0 = time.time()
    train(cfg, run, overwrite=True)
    print(f"{name}: {steps} steps in {time.time() - t0:.0f} s", flush=True)
    return run


def _zeroshot(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["zeroshot_top1"] for r in rows if "zeroshot_top1" in r}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--heldout", type=int, default=200, help="validation images captioned per checkpoint")
    ap.add_argument("--out", default="/tmp/bench_captioning")
    ap.add_argument("--threads", type=int, default=2)
    add_common_args(ap, seeds=(0,), seeds_help="training seeds (each seed trains both runs; the curve and examples "
                                               "are the first seed's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits = build_digits(str(out / "digits"))
    refs = _references(digits, out, args.heldout)
    suffix = {s: ("" if i == 0 else f"-seed{s}") for i, s in enumerate(args.seeds)}
    runs = {s: (_run("coca" + suffix[s], digits, out, args.steps, "coca", args.batch_size, s),
                _run("clip_only" + suffix[s], digits, out, args.steps, "clip", args.batch_size, s)) for s in args.seeds}
    coca, clip = runs[args.seeds[0]]
    ckpts = sorted((coca / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[-1]))
    final = load_model(str(coca / "final"))
    torch.manual_seed(0)
    untrained = build_model(final.config, tokenizer=final.tokenizer).eval()
    curve, examples = [], {}
    for step, model in [(0, untrained)] + [(int(p.name.split("-")[-1]), load_model(str(p))) for p in ckpts]:
        t0 = time.time()
        res = evaluate_captioning(Captioner(model), refs, method="greedy", max_tokens=16, examples=12,
                                  batch_size=64, progress=False)
        curve.append({"step": step, **{k: round(v, 4) for k, v in res["metrics"].items()},
                      "seconds": round(time.time() - t0, 1)})
        examples[step] = [e["caption"] for e in res["examples"]]
        print(curve[-1], flush=True)
    beam = evaluate_captioning(Captioner(final), refs, method="beam", beams=4, max_tokens=16, examples=0,
                               batch_size=64, progress=False)["metrics"]
    rows = [json.loads(x) for x in Path(refs[len("jsonl:"):]).read_text().splitlines()][:12]
    result = {"steps": args.steps, "batch_size": args.batch_size, "heldout_images": args.heldout, "curve_greedy": curve,
              "final_beam4": {k: round(v, 4) for k, v in beam.items()},
              "zeroshot_top1": {"coca": _zeroshot(coca), "clip_only": _zeroshot(clip)},
              "zeroshot_top1_per_seed": {s: {"coca": _zeroshot(c), "clip_only": _zeroshot(k)}
                                         for s, (c, k) in runs.items()}, "seeds": args.seeds,
              "examples": [{"id": r["id"], "digit": r["label"], "untrained": examples[0][i],
                            "final": examples[curve[-1]["step"]][i]} for i, r in enumerate(rows)]}
    write_results(None, result, args.json or str(out / "results.json"))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
