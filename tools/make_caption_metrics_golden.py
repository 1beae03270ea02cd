"""Write tests/golden/caption_metrics.json: pycocoevalcap's BLEU-1..4 and CIDEr-D (and its PTB tokenizer's
output) on fixed candidate / reference captions, one or several references per image.

    /work/refenv/bin/python tools/make_caption_metrics_golden.py      # from the repository root (needs Java
                                                                      # for the PTB tokenizer)

It imports nothing from clipforge; tests/test_caption_metrics.py compares clipforge.metrics.captioning.
"""
from __future__ import annotations

import json
import random
from importlib.metadata import version
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "caption_metrics.json"
WORDS = ("a the dog cat two man woman red blue bicycle street grass sitting on in of with playing ball small "
         "large photo digit seven three handwritten number near tree").split()


def corpus(seed: int, n_images: int, max_refs: int):
    rng = random.Random(seed)
    cands, refs = [], []
    for _ in range(n_images):
        base = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        cand = [w if rng.random() < 0.7 else rng.choice(WORDS) for w in base[: rng.randint(1, len(base))]]
        cands.append(" ".join(cand))
        refs.append([" ".join(w if rng.random() < 0.8 else rng.choice(WORDS) for w in base)
                     for _ in range(rng.randint(1, max_refs))])
    return cands, refs


def score(cands, refs):
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    c, per = Cider().compute_score(gts, res)
    return {"bleu": [float(x) for x in b], "cider": float(c), "cider_per_image": [float(x) for x in per]}


def main() -> None:
    cases = []
    for seed, n, k in ((0, 1, 1), (1, 5, 1), (2, 20, 5), (3, 60, 3), (4, 8, 10)):
        cands, refs = corpus(seed, n, k)
        cases.append({"candidates": cands, "references": refs, **score(cands, refs)})
    raw = {"candidates": ["A dog's toy, on the grass!", "Two  cats -- sleeping...", "The digit 7; handwritten."],
           "references": [["A dog's toy on grass.", "a toy of the dog"], ["two cats are sleeping"],
                          ["A handwritten digit seven.", "the number 7, written by hand", "digit 7"]]}
    tok = PTBTokenizer()
    raw["tokenized_candidates"] = [v[0] for _, v in sorted(tok.tokenize(
        {i: [{"caption": c}] for i, c in enumerate(raw["candidates"])}).items())]
    raw["tokenized_references"] = [v for _, v in sorted(tok.tokenize(
        {i: [{"caption": r} for r in rs] for i, rs in enumerate(raw["references"])}).items())]
    raw.update(score(raw["tokenized_candidates"], raw["tokenized_references"]))
    OUT.write_text(json.dumps({"generator": "/work/refenv/bin/python tools/make_caption_metrics_golden.py",
                               "versions": {"pycocoevalcap": version("pycocoevalcap")},
                               "cases": cases, "raw": raw}, indent=1))
    print("wrote", OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
