"""Image-caption selection scores (SugarCrepe, Winoground), as CLIP_benchmark's `image_caption_selection` computes them.

An instance has I images and T captions, image i described by caption i for i < G = min(I, T). With the
similarity matrix S = images @ captions.T (I x T):

- text correct:  for every i < G, argmax_j S[i, j] == i (each image picks its own caption among all T);
- image correct: for every j < G, argmax_i S[i, j] == j (each caption picks its own image among all I);
- group correct: both.

A SugarCrepe instance (one image; its positive first, then the negatives) is text correct when the positive
scores highest: that is its accuracy (its image score is 1 by construction). Winoground's text / image / group
scores are the means of the three over its 2 x 2 instances. Ties go to the lower index, as `argmax` does
(so a negative scoring exactly like the positive does not count against it).
"""
from __future__ import annotations

import numpy as np

__all__ = ["instance_correct", "selection_metrics", "UNTYPED"]

UNTYPED = "all"  # the type of an instance that names none: no per-type breakdown when it is the only one


def instance_correct(image_emb, text_emb) -> tuple[bool, bool]:
    """(text correct, image correct) of one instance; `image_emb` (I, D), `text_emb` (T, D)."""
    s = np.asarray(image_emb, dtype=np.float64) @ np.asarray(text_emb, dtype=np.float64).T
    g = min(s.shape)
    gt = np.arange(g)
    return bool((s.argmax(1)[:g] == gt).all()), bool((s.argmax(0)[:g] == gt).all())


def selection_metrics(instances) -> tuple[dict, dict]:
    """`instances`: (image_emb (I, D), text_emb (T, D), type) triples. Returns (metrics, counts).

    Selection instances (I == 1): `acc` over all of them and `acc/<type>` per type. Group instances (I > 1):
    `text_score`, `image_score`, `group_score` and the same per type (`text_score/<type>`, ...). counts:
    {"selection": n, "groups": n, "per_type": {type: n}}."""
    sel: dict[str, list[bool]] = {}
    grp: dict[str, list[tuple[bool, bool]]] = {}
    for image_emb, text_emb, kind in instances:
        text_ok, image_ok = instance_correct(image_emb, text_emb)
        if len(image_emb) == 1:
            sel.setdefault(kind, []).append(text_ok)
        else:
            grp.setdefault(kind, []).append((text_ok, image_ok))
    metrics: dict = {}
    if sel:
        metrics["acc"] = float(np.mean([v for vs in sel.values() for v in vs]))
        for kind in _breakdown(sel):
            metrics[f"acc/{kind}"] = float(np.mean(sel[kind]))
    if grp:
        every = [v for vs in grp.values() for v in vs]
        for name, pick in (("text_score", lambda t, i: t), ("image_score", lambda t, i: i),
                           ("group_score", lambda t, i: t and i)):
            metrics[name] = float(np.mean([pick(*v) for v in every]))
            for kind in _breakdown(grp):
                metrics[f"{name}/{kind}"] = float(np.mean([pick(*v) for v in grp[kind]]))
    per_type = {k: len(sel.get(k, ())) + len(grp.get(k, ())) for k in sorted({*sel, *grp})}
    return metrics, {"selection": sum(map(len, sel.values())), "groups": sum(map(len, grp.values())),
                     "per_type": per_type}


def _breakdown(by_type: dict) -> list[str]:
    """The types to report one by one: all of them, unless every instance is untyped."""
    return [] if set(by_type) == {UNTYPED} else sorted(by_type)
