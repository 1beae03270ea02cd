"""Diagnostic for bench_adapt_pretrained.py: why Tip-Adapter(-F) trails the linear probe / does not beat
Tip-Adapter. For each domain and k (seed 0..2): the alpha/beta the protocol's search picks (validation split,
or leave-one-out on the support at k = 4) and their query top-1, against the best query top-1 anywhere on the
same grid (an oracle: the ceiling a perfect selection would reach), and Tip-Adapter-F at the paper's recipe
(20 epochs, lr 1e-3) against a longer / faster one (100 epochs, lr 1e-2), plus the cache-key drift.

    .venv/bin/python bench/bench_adapt_pretrained_tipdiag.py [emoji openmoji] [--seeds 0,1,2] [--json PATH]
        (needs the feature caches of the main bench)
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clipforge.adapt import SupportSet, fit_fewshot, sample_support  # noqa: E402
from clipforge.adapt.fewshot_heads import tip_logits  # noqa: E402
from clipforge.encode import Encoder  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import add_common_args, summarize, write_results  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("domains", nargs="*", default=["emoji", "openmoji"])
    add_common_args(ap, seeds_help="support-set draws")
    a = ap.parse_args()
    rows = []
    enc = Encoder.load("runs/align1/final", device="cpu")
    W = ROOT / "runs/bench_adapt_pretrained"
    for dom in a.domains:
        d = ROOT / "clipforge-demo" / dom
        names = (d / "fewshot/classnames.txt").read_text().splitlines()
        pool = torch.load(W / f"features-{dom}-support.pt", weights_only=False)["feats"]
        test = torch.load(W / f"features-{dom}-query.pt", weights_only=False)["feats"]
        x, y, tx, ty = pool.feats, pool.label_tensor(), test.feats, test.label_tensor()
        tmpl = str(d / "templates_unseen.txt")
        for k in (1, 2, 4):
            for seed in a.seeds:
                sup, val = sample_support(y.numpy(), k, seed, min(k, 4))
                s = SupportSet.from_features(x[sup], y[sup], names, x[val], y[val])
                h = fit_fewshot("tip-adapter", enc, s, seed=seed, templates=tmpl)
                acc = float((h.scores(tx).argmax(-1) == ty).float().mean())
                alphas = torch.logspace(-1, 2, 40)
                betas = torch.linspace(0.1, 10, 40)
                f = torch.nn.functional.normalize(tx.float(), dim=-1)
                best = max(((float((tip_logits(f, h.zs_weights, h.keys, h.values, float(al), float(be), 100.0)
                                    .argmax(-1) == ty).float().mean()), float(al), float(be))
                            for al in alphas[::3] for be in betas[::3]))
                hf = fit_fewshot("tip-adapter-f", enc, s, seed=seed, templates=tmpl)
                hf2 = fit_fewshot("tip-adapter-f", enc, s, seed=seed, templates=tmpl, epochs=100, lr=1e-2)
                af = float((hf.scores(tx).argmax(-1) == ty).float().mean())
                af2 = float((hf2.scores(tx).argmax(-1) == ty).float().mean())
                drift = float((hf.keys - s.feats).norm(dim=-1).mean()), float((hf2.keys - s.feats).norm(dim=-1).mean())
                print(f"{dom} k={k} s={seed} val={len(val)} tip: a={h.alpha:.2f} b={h.beta:.2f} sel_acc="
                      f"{h.meta['search_accuracy']:.3f} query={acc:.3f} | oracle {best[0]:.3f} (a={best[1]:.2f} "
                      f"b={best[2]:.2f}) | tip-f 20ep/1e-3 {af:.3f} (a={hf.alpha:.2f}, key drift {drift[0]:.4f}) "
                      f"100ep/1e-2 {af2:.3f} (a={hf2.alpha:.2f}, drift {drift[1]:.4f})", flush=True)
                rows.append({"domain": dom, "k": k, "seed": seed, "tip": acc, "oracle": best[0], "tip_f": af,
                             "tip_f_100ep": af2, "alpha": h.alpha, "beta": h.beta, "key_drift": drift})
    summary = {f"{d} k={k} {m}": summarize([r[m] for r in rows if (r["domain"], r["k"]) == (d, k)],
                                           [r["seed"] for r in rows if (r["domain"], r["k"]) == (d, k)])
               for d, k in dict.fromkeys((r["domain"], r["k"]) for r in rows) for m in ("tip", "oracle", "tip_f")}
    write_results(None, {"bench": "adapt_pretrained_tipdiag", "seeds": a.seeds, "rows": rows, "summary": summary},
                  a.json or str(W / "tipdiag.json"))


if __name__ == "__main__":
    main()
