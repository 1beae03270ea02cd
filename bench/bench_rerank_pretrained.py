"""Two-stage retrieval with the pretrained base as second stage, on real pairs never seen in training.

    python bench/bench_rerank_pretrained.py --align runs/align1/final [--work /tmp/rerank-pre]
        [--seeds 0,1,2] [--steps 300] [--out docs/bench_rerank_pretrained.md]

Collection: the emoji set's held-out concepts, one image each (475 images; `clipforge data demo emoji`),
each queried by its CLDR name. Stage 1: a `tiny` CLIP trained from scratch on the emoji training pairs for
`--steps` steps (one per seed: the weak, cheap first stage). Stage 2: the aligned lite0-minilm checkpoint
(`--align`, aligned on the same training concepts). Reported per rerank_k: stage 1 alone, stage 2 alone over
the whole collection, the two-stage R@1/R@5, and stage 1's candidate recall (the ceiling of reranking), mean
and spread over the seeds; through `clipforge.evaluate.two_stage_retrieval.evaluate_two_stage_retrieval`,
the function behind `clipforge eval --task zeroshot-retrieval --rerank`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    from common import add_common_args, fmt, machine_line, publish, summarize, write_results
    from clipforge.data.demo_emoji import build_emoji
    from clipforge.evaluate.two_stage_retrieval import evaluate_two_stage_retrieval
    from clipforge.models import load_model
    from clipforge.train.config import config_from_dict
    from clipforge.train.loop import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--align", required=True, help="the aligned lite0-minilm checkpoint (stage 2)")
    ap.add_argument("--work", default="/tmp/clipforge-rerank-pretrained")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ks", default="10,50,100")
    ap.add_argument("--out", default=None)
    add_common_args(ap, seeds_help="stage-1 training seeds")
    a = ap.parse_args()
    seeds = ",".join(map(str, a.seeds))
    work = Path(a.work)
    t0 = time.perf_counter()
    emoji = build_emoji(str(work / "emoji"))
    rows = [json.loads(x) for x in Path(emoji["val_manifest"]).read_text().splitlines() if x.strip()]
    plain = [r for r in rows if not r.get("skin_tone")]
    coll = work / "collection.jsonl"
    coll.write_text("".join(json.dumps({"id": r["id"], "image": r["image"], "captions": r["captions"][:1]}) + "\n"
                            for r in plain))
    stage2 = load_model(a.align).eval()
    ks = [int(k) for k in a.ks.split(",")]
    res = {k: [] for k in ks}
    for seed in a.seeds:
        run = work / f"tiny-{seed}"
        if not (run / "final" / "model.safetensors").is_file():
            cfg = config_from_dict({
                "model": {"name": "tiny", "tokenizer": "train", "tokenizer_vocab_size": 2048,
                          "overrides": {"preprocess": {"per_image_norm": True}}},
                "data": {"train": f"jsonl:{emoji['train_manifest']}", "batch_size": 128},
                "optim": {"lr": 2e-3, "weight_decay": 0.1}, "schedule": {"warmup_steps": 20},
                "run": {"steps": a.steps, "seed": seed, "log_every": 100, "checkpoint_every": a.steps,
                        "keep_checkpoints": 1, "progress": False}}).validate()
            train(cfg, run)
        stage1 = load_model(run / "final").eval()
        for k in ks:
            m = evaluate_two_stage_retrieval(stage1, stage2, f"jsonl:{coll}", rerank_k=k, ks=(1, 5),
                                             progress=False)["metrics"]
            res[k].append(m)
            print(seed, k, {n: round(v, 3) for n, v in m.items() if isinstance(v, float)}, flush=True)

    stats = {}

    def ms(k, key):
        stats[f"k={k} {key}"] = summarize([m[key] for m in res[k]], a.seeds)
        return fmt(stats[f"k={k} {key}"], seeds=False)

    cols = [("stage 1 R@1", "t2i_R@1"), ("stage 2 alone R@1", "stage2_t2i_R@1"), ("two-stage R@1", "rerank_t2i_R@1"),
            ("two-stage R@5", "rerank_t2i_R@5"), ("two-stage MRR", "rerank_t2i_MRR"), ("candidate recall", None)]
    lines = ["# Two-stage retrieval with the pretrained base as second stage", "",
             f"Machine: {machine_line()}. Collection: {len(plain)} held-out emoji "
             f"concepts (one image each), queried by name; stage 1 `tiny` from scratch, {a.steps} steps, seeds "
             f"{seeds}; stage 2 `{a.align}`. Total {time.perf_counter() - t0:.0f} s. Command: "
             f"`python bench/bench_rerank_pretrained.py --align {a.align} --seeds {seeds} --steps {a.steps}`.", "",
             "| rerank_k | " + " | ".join(c for c, _ in cols) + " |", "|---:|" + "---:|" * len(cols)]
    for k in ks:
        lines.append(f"| {k} | " + " | ".join(ms(k, key or f"candidates_R@{k}") for _, key in cols) + " |")
    lines += ["", "Mean ± sample std over the seeds (stage 1 differs per seed; stage 2 is one checkpoint)."]
    publish("\n".join(lines) + "\n", a.out)
    write_results(a.out, {"bench": "rerank_pretrained", "seeds": a.seeds, "steps": a.steps, "recall": stats,
                          "runs": {k: v for k, v in res.items()}}, a.json)


if __name__ == "__main__":
    main()
