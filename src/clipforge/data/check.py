"""Inspect a source: counts, unreadable files by reason, image-size and caption-length statistics.

`check_source` decodes every image once (this is the point: find the bad files before a long job does) and
returns a JSON-ready report; `format_report` renders it for a terminal. Besides the bad samples by reason, the
report lists samples that were read but changed on the way (`notes`: `caption_truncated`, a caption cut to the
reader's `max_caption_bytes`), so nothing a reader altered goes unsaid.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from clipforge.data.display import shown as _shown  # hostile names can neither forge lines nor break them


def _stats(values) -> dict | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"min": float(a.min()), "mean": round(float(a.mean()), 3), "median": float(np.median(a)),
            "max": float(a.max())}


def check_source(source, progress=None, limit: int | None = None) -> dict:
    """Read (up to `limit`) samples of `source`; return counts and statistics, bad files by reason."""
    widths, heights, modes = [], [], Counter()
    caps_per_sample, cap_chars, cap_words = [], [], []
    labels = Counter()
    n_ok = 0
    for sample, img in source.iter_decoded(progress=progress, desc="checking"):
        n_ok += 1
        widths.append(img.width)
        heights.append(img.height)
        modes[img.info.get("orig_mode", img.mode)] += 1
        caps_per_sample.append(len(sample.captions))
        for c in sample.captions:
            cap_chars.append(len(c))
            cap_words.append(len(c.split()))
        if sample.label is not None:
            labels[sample.label] += 1
        sample.drop_image()
        if limit is not None and n_ok + source.skipped.total >= limit:
            break
    bad = source.skipped
    notes = getattr(source, "notes", None) or {}
    report = {
        "source": source.spec,
        "kind": source.kind,
        "num_samples": n_ok + bad.total,
        "num_ok": n_ok,
        "num_bad": bad.total,
        "bad": {"by_reason": dict(sorted(bad.items())), "samples": [list(s) for s in bad.samples]},
        "notes": {"by_reason": dict(sorted(notes.items())),
                  "samples": [list(s) for s in getattr(notes, "samples", [])]},
        "image_width": _stats(widths),
        "image_height": _stats(heights),
        "image_modes": dict(modes.most_common()),
        "captions": {
            "num_captions": int(sum(caps_per_sample)),
            "samples_with_captions": int(sum(1 for c in caps_per_sample if c)),
            "per_sample": _stats(caps_per_sample),
            "length_chars": _stats(cap_chars),
            "length_words": _stats(cap_words),
        },
        "classes": None,
    }
    if labels or source.classnames:
        names = source.classnames
        counts = {(names[k] if names and 0 <= k < len(names) else str(k)): v for k, v in sorted(labels.items())}
        report["classes"] = {"num_classes": len(names) if names else len(labels), "classnames": names,
                             "counts": counts}
    return report


def format_report(r: dict) -> str:
    lines = [f"source: {_shown(r['source'])} ({r['kind']})",
             f"samples: {r['num_samples']}  readable: {r['num_ok']}  bad: {r['num_bad']}"]
    if r["num_bad"]:
        lines.append("bad by reason: " + ", ".join(f"{k}={v}" for k, v in r["bad"]["by_reason"].items()))
        for sid, reason in r["bad"]["samples"][:50]:
            lines.append(f"  {reason:16s} {_shown(str(sid))}")
        if len(r["bad"]["samples"]) > 50:
            lines.append(f"  ... {len(r['bad']['samples']) - 50} more (all of them in the JSON report)")
    if r.get("notes", {}).get("by_reason"):
        lines.append("read but changed: " + ", ".join(f"{k}={v}" for k, v in r["notes"]["by_reason"].items()))
    for key in ("image_width", "image_height"):
        s = r[key]
        if s:
            lines.append(f"{key.replace('_', ' ')}: min {s['min']:.0f}  median {s['median']:.0f}  max {s['max']:.0f}")
    if r["image_modes"]:
        lines.append("image modes: " + ", ".join(f"{k}={v}" for k, v in r["image_modes"].items()))
    c = r["captions"]
    lines.append(f"captions: {c['num_captions']} on {c['samples_with_captions']} samples")
    if c["length_words"]:
        w = c["length_words"]
        lines.append(f"caption words: min {w['min']:.0f}  mean {w['mean']:.1f}  max {w['max']:.0f}")
    if r["classes"]:
        k = r["classes"]
        lines.append(f"classes: {k['num_classes']}  " + ", ".join(f"{_shown(n)}={v}" for n, v in list(k["counts"].items())[:20]))
    return "\n".join(lines)
