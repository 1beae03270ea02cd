"""Zero-shot methods on the pretrained base (runs/align1/final) over the emoji set's 475 HELD-OUT concepts
(val/ image folder, 855 images): mean (prompt ensemble), zpe, cupl, describe, disclip. No LLM runs here: the
description-based methods get sentences built from the set's own metadata (concepts.json: Unicode name,
category, sub-category), the same builder as bench_adapt_pretrained.py's GIST descriptions. Nothing here is
random (fixed checkpoint, fixed images, deterministic methods): `--seeds` is recorded, and one seed is one run.

    .venv/bin/python bench/bench_zeroshot_pretrained.py --out docs/bench_zeroshot_pretrained.md
        [--templates train|unseen|both] [--methods mean,zpe,cupl,describe,disclip]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, publish, write_results  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--base", default="runs/align1/final")
    ap.add_argument("--data", default=str(ROOT / "clipforge-demo/emoji"))
    ap.add_argument("--work", default=str(ROOT / "runs/bench_adapt_pretrained"))
    ap.add_argument("--methods", default="mean,zpe,cupl,describe,disclip")
    add_common_args(ap, seeds=(0,), seeds_help="recorded only: the figures do not depend on a seed")
    a = ap.parse_args()
    if len(a.seeds) > 1:
        print(f"note: this bench is deterministic; seeds {a.seeds} would give the same figures: run once")

    import torch

    from bench_adapt_pretrained import descriptions_file, encode_cached
    from clipforge.encode import Encoder
    from clipforge.metrics.classification import classification_metrics
    from clipforge.zeroshot import METHODS

    t_all = time.perf_counter()
    data, work = Path(a.data), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    enc = Encoder.load(a.base, device="cpu")
    key = f"{Path(a.base).resolve()}:{os.path.getmtime(Path(a.base) / 'model.safetensors')}"
    names = (data / "val/classnames.txt").read_text().splitlines()
    t = time.perf_counter()
    test = encode_cached(enc, f"imagefolder:{data}/val", work / f"features-{data.name}-val.pt", key)
    enc_s = time.perf_counter() - t
    y = test.label_tensor().numpy()
    desc = descriptions_file(data, names, work / f"descriptions-{data.name}-val.json")
    templates = str(data / "templates_unseen.txt")
    rows = []
    for m in [x.strip() for x in a.methods.split(",") if x.strip()]:
        opts = {"templates": templates}
        if m in ("cupl", "describe", "disclip"):
            opts["descriptions"] = desc
        t = time.perf_counter()
        try:
            scorer = METHODS.create(m, **opts).build(enc, names, test_features=test.feats)
            s = scorer.scores(test.feats)
            met = classification_metrics(torch.as_tensor(s).float().numpy(), y, ks=(1, 5))
            rows.append((m, met["top1"], met["top5"], time.perf_counter() - t, ""))
        except Exception as e:  # report, keep going
            rows.append((m, float("nan"), float("nan"), time.perf_counter() - t, f"{type(e).__name__}: {e}"))
        print(rows[-1], flush=True)
    lines = ["| method | top-1 | top-5 | build + score s | note |", "|---|---:|---:|---:|---|"]
    lines += [f"| {m} | {t1:.3f} | {t5:.3f} | {s:.1f} | {note} |" for m, t1, t5, s, note in rows]
    text = (f"`.venv/bin/python bench/bench_zeroshot_pretrained.py {' '.join(sys.argv[1:])}` — torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads; {len(y)} images of {len(names)} held-out "
            f"classes; image encoding {enc_s:.0f} s (cached after the first run), total "
            f"{time.perf_counter() - t_all:.0f} s. Templates: {templates}. Deterministic (no seed enters): single "
            "run.\n\n" + "\n".join(lines) + "\n")
    publish(text, a.out)
    write_results(a.out, {"bench": "zeroshot_pretrained", "seeds": a.seeds[:1], "deterministic": True,
                          "rows": [{"method": m, "top1": t1, "top5": t5, "seconds": sec, "note": note}
                                   for m, t1, t5, sec, note in rows]}, a.json)


if __name__ == "__main__":
    main()
