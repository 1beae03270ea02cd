"""Thresholds: known absolute values, quantile thresholds, and calibrating a threshold for a new model.

A CLIP score threshold only means something for the model that produced the scores: cosines of different
models live on different scales. LAION's published values (`KNOWN_THRESHOLDS`) are for OpenAI's ViT-B/32
(English) and a multilingual CLIP (ViT-B/32 image tower); for any other model, calibrate.

Calibration rule (kept fraction matching): on the same pairs (matched by sample id and caption index), the
reference model's threshold keeps a fraction f of them; the new model's threshold is the score that keeps the
same fraction f of the new model's scores, i.e. its (1 - f) quantile. The pairs may be a sample of the data:
score a sample with both models, calibrate, then filter everything with the new model's threshold.

Mismatch rate (`estimate_mismatch_rate`): how many pairs of a scored set do not match, without their ground
truth. The threshold t keeping a fraction q of clean pairs scored by the same model sends 1 - q of them below
it; if the set holds a share p of mismatched pairs and they score below t, the share of the set below t is
r = (1 - p)(1 - q) + p, so p = (r - (1 - q)) / q. Mismatched pairs scoring above t are not counted: a lower
bound, within a few points when the scorer separates them (bench_curation reports it beside the true rate).
"""
from __future__ import annotations

import math

import numpy as np

from clipforge.errors import UsageError

__all__ = ["KNOWN_THRESHOLDS", "resolve_min_score", "quantile_threshold", "calibrate_threshold",
           "estimate_mismatch_rate"]

# name -> (threshold, what it was used for). LAION-400M: ViT-B/32 cosine >= 0.3; LAION-5B: ViT-B/32 >= 0.28 for
# English (LAION-2B-en), multilingual CLIP >= 0.26 for the other languages (LAION-2B-multi, LAION-1B-nolang).
KNOWN_THRESHOLDS = {
    "laion400m": (0.30, "LAION-400M, OpenAI ViT-B/32"),
    "laion2b-en": (0.28, "LAION-2B-en, OpenAI ViT-B/32 (English captions)"),
    "laion2b-multi": (0.26, "LAION-2B-multi, multilingual CLIP ViT-B/32 (other languages)"),
}


def resolve_min_score(min_score) -> float | None:
    """A number, or a name in KNOWN_THRESHOLDS -> the threshold (None stays None)."""
    if min_score is None:
        return None
    if isinstance(min_score, str):
        if min_score in KNOWN_THRESHOLDS:
            return KNOWN_THRESHOLDS[min_score][0]
        try:
            min_score = float(min_score)
        except ValueError:
            raise UsageError(f"`min_score` {min_score!r}: give a number or one of {sorted(KNOWN_THRESHOLDS)}") from None
    v = float(min_score)
    if not math.isfinite(v) or not -1.0 <= v <= 1.0:
        raise UsageError(f"`min_score` must be a cosine in [-1, 1], got {min_score}")
    return v


def quantile_threshold(scores, keep_fraction: float) -> float:
    """The threshold that keeps the top `keep_fraction` of `scores` (pairs with score >= it are kept): the
    ceil(f * n)-th highest score (ties at the threshold are all kept)."""
    if not 0.0 < keep_fraction <= 1.0:
        raise UsageError(f"`keep_top` must be a fraction in (0, 1], got {keep_fraction}")
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    s = s[np.isfinite(s)]
    if not len(s):
        raise UsageError("no scored pairs to take a quantile of")
    k = max(1, math.ceil(keep_fraction * len(s) - 1e-9))
    return float(s[k - 1])


def calibrate_threshold(ref: dict, ref_threshold: float, new: dict) -> dict:
    """ref / new: {(id, caption_index): score} from the reference and the new model on the same data.

    Returns {"threshold", "kept_fraction", "pairs"}: the new model's threshold keeping the fraction of the
    matched pairs that `ref_threshold` keeps for the reference model.
    """
    keys = sorted(set(ref) & set(new))
    if not keys:
        raise UsageError("the reference scores and these scores share no (id, caption) pair: score the same data")
    r = np.array([ref[k] for k in keys], dtype=np.float64)
    f = float((r >= ref_threshold).mean())
    if f == 0.0:
        raise UsageError(f"the reference threshold {ref_threshold} keeps none of the {len(keys)} shared pairs")
    return {"threshold": quantile_threshold([new[k] for k in keys], f), "kept_fraction": f, "pairs": len(keys),
            "ref_threshold": float(ref_threshold)}


def estimate_mismatch_rate(scores, clean_scores, keep_clean: float = 0.9) -> dict:
    """{"rate": the estimated share of mismatched pairs in `scores` (clipped to [0, 1]), "threshold": the score
    keeping `keep_clean` of `clean_scores`, "below": the share of `scores` under it, "pairs": how many scores}."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        raise UsageError("no scored pairs to estimate a mismatch rate from")
    if not 0.0 < keep_clean < 1.0:
        raise UsageError(f"`keep_clean` must be a fraction in (0, 1), got {keep_clean}")
    t = quantile_threshold(clean_scores, keep_clean)
    below = float((s < t).mean())
    rate = (below - (1.0 - keep_clean)) / keep_clean
    return {"rate": float(min(max(rate, 0.0), 1.0)), "threshold": t, "below": below, "pairs": int(len(s))}
