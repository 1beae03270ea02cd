"""`filter_source`: keep the pairs that pass the rules, write them as a new source, record every removal.

Rules (`FilterRules`; each None is off):
  score       min_score (a cosine, or a name in `KNOWN_THRESHOLDS`), keep_top (keep that fraction of pairs,
              by score), or calibrate (a reference model's scores file + its threshold; see `calibrate.py`).
              Exactly one of the three, or none.
  image       min_side (shorter side, px), max_aspect (long / short side), min_file_bytes (LAION: 5000)
  caption     min_caption_chars (LAION: 5), max_caption_chars, languages (keep these language codes; needs the
              scores' `lang` column). A caption whose language could not be told (`lang` "unknown" or none:
              too short or ambiguous, see `lang.py`) is kept unless keep_unknown_language is False: most
              are short captions in the very language asked for

Per-pair rules (score, caption, language) remove one caption; a sample stays while at least one caption
survives and is removed with the union of its captions' reasons when none does. Per-image rules remove the
sample. Samples the score job could not read are removed as "unreadable:<reason>"; samples without a caption
as "no_caption" (unless `keep_uncaptioned`). Removals from other steps (e.g. de-duplication's removals file)
can be applied in the same pass (`also_remove`), so one output and one removals file carry every reason.

Reason names: low_score, small_image, aspect_ratio, small_file, short_caption, long_caption, language,
no_caption, unreadable:<reason>, and those of the merged files (exact_duplicate, near_duplicate, ...).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from clipforge.curate.calibrate import calibrate_threshold, quantile_threshold, resolve_min_score
from clipforge.curate.job import read_scores, scores_info
from clipforge.curate.lang import UNKNOWN
from clipforge.curate.selection import merge_removals, read_removals, vet_selection_output, write_selection
from clipforge.data.sources import open_source
from clipforge.errors import UsageError

__all__ = ["FilterRules", "decide", "filter_source", "pair_scores"]


@dataclass
class FilterRules:
    min_score: Optional[float | str] = None
    keep_top: Optional[float] = None
    calibrate: Optional[str] = None          # a reference model's scores file
    ref_threshold: Optional[float | str] = None  # the reference model's threshold (with calibrate)
    min_side: Optional[int] = None
    max_aspect: Optional[float] = None
    min_file_bytes: Optional[int] = None
    min_caption_chars: Optional[int] = None
    max_caption_chars: Optional[int] = None
    languages: Optional[Sequence[str]] = None
    keep_unknown_language: bool = True       # with languages: keep captions whose language is unknown
    keep_uncaptioned: bool = False

    def check(self) -> None:
        given = [n for n in ("min_score", "keep_top", "calibrate") if getattr(self, n) is not None]
        if len(given) > 1:
            raise UsageError(f"give one score rule, not {' and '.join(f'`{n}`' for n in given)}")
        if self.calibrate is not None and self.ref_threshold is None:
            raise UsageError("`calibrate` needs `ref_threshold`, the reference model's threshold (e.g. 0.28)")
        if self.ref_threshold is not None and self.calibrate is None:
            raise UsageError("`ref_threshold` applies only with `calibrate`")
        for name in ("min_side", "min_file_bytes", "min_caption_chars", "max_caption_chars"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise UsageError(f"`{name}` must be >= 0, got {v}")
        if self.max_aspect is not None and not self.max_aspect >= 1.0:
            raise UsageError(f"`max_aspect` must be >= 1 (long side / short side), got {self.max_aspect}")
        if self.languages is not None and not list(self.languages):
            raise UsageError("`languages` is empty: name at least one language code, e.g. en")


def pair_scores(table) -> dict:
    """{(id, caption_index): score} of every scored pair of a scores table."""
    ids, idx, sc = (table.column(c).to_pylist() for c in ("id", "caption_index", "score"))
    return {(i, k): s for i, k, s in zip(ids, idx, sc) if s is not None}


def _threshold(rules: FilterRules, table) -> tuple[Optional[float], dict]:
    """The score threshold these rules imply for this table, and how it was chosen."""
    if rules.min_score is not None:
        t = resolve_min_score(rules.min_score)
        return t, {"rule": "min_score", "given": rules.min_score, "threshold": t}
    scores = np.array([s for s in table.column("score").to_pylist() if s is not None], np.float64)
    if rules.keep_top is not None:
        t = quantile_threshold(scores, rules.keep_top)
        return t, {"rule": "keep_top", "keep_top": rules.keep_top, "threshold": t}
    if rules.calibrate is not None:
        ref_t = resolve_min_score(rules.ref_threshold)
        cal = calibrate_threshold(pair_scores(read_scores(rules.calibrate, ["id", "caption_index", "score"])),
                                  ref_t, pair_scores(table))
        return cal["threshold"], {"rule": "calibrate", "reference": str(rules.calibrate), **cal}
    return None, {"rule": None}


def decide(table, rules: FilterRules) -> tuple[dict[int, list[int]], list[dict], dict]:
    """Apply `rules` to a scores table.

    Returns (kept: {position: [kept caption indices]}, removals: records in source order (see
    `selection.py`), threshold info). Pure: reads the table only.
    """
    rules.check()
    cols = {c: table.column(c).to_pylist() for c in ("id", "position", "caption_index", "caption", "score",
                                                      "width", "height", "aspect", "file_bytes", "caption_chars",
                                                      "skip_reason")}
    has_lang = "lang" in table.column_names
    if rules.languages is not None and not has_lang:
        raise UsageError("`languages` needs a language guess in the scores: score again with py3langid installed")
    langs = table.column("lang").to_pylist() if has_lang else None
    wanted = set(rules.languages or ())
    if wanted and rules.keep_unknown_language:
        wanted |= {UNKNOWN, None}
    threshold, how = _threshold(rules, table)
    samples: dict = {}  # id -> {"position", "reasons" (sample level), "caps": [(index, text, score, reasons)]}
    order: list = []
    for r in range(table.num_rows):
        sid = cols["id"][r]
        s = samples.get(sid)
        if s is None:
            s = samples[sid] = {"position": cols["position"][r], "reasons": [], "caps": []}
            order.append(sid)
            if cols["skip_reason"][r] is not None:
                s["reasons"].append(f"unreadable:{cols['skip_reason'][r]}")
                continue
            w, h = cols["width"][r], cols["height"][r]
            if rules.min_side is not None and min(w, h) < rules.min_side:
                s["reasons"].append("small_image")
            if rules.max_aspect is not None and cols["aspect"][r] > rules.max_aspect:
                s["reasons"].append("aspect_ratio")
            if rules.min_file_bytes is not None and (cols["file_bytes"][r] or 0) < rules.min_file_bytes:
                s["reasons"].append("small_file")
        if cols["skip_reason"][r] is not None or cols["caption_index"][r] < 0:
            continue
        why = []
        score = cols["score"][r]
        if threshold is not None and (score is None or score < threshold):
            why.append("low_score")
        n = cols["caption_chars"][r] or 0
        if rules.min_caption_chars is not None and n < rules.min_caption_chars:
            why.append("short_caption")
        if rules.max_caption_chars is not None and n > rules.max_caption_chars:
            why.append("long_caption")
        if wanted and langs[r] not in wanted:
            why.append("language")
        s["caps"].append((cols["caption_index"][r], cols["caption"][r], score, why))
    kept: dict[int, list[int]] = {}
    removals = []
    for sid in order:
        s = samples[sid]
        gone = [c for c in s["caps"] if c[3]]
        alive = [c for c in s["caps"] if not c[3]]
        reasons = list(s["reasons"])
        unreadable = any(x.startswith("unreadable:") for x in reasons)
        if not s["caps"] and not unreadable and not rules.keep_uncaptioned:
            reasons.append("no_caption")
        if s["caps"] and not alive:
            reasons += sorted({x for c in gone for x in c[3]} - set(reasons))
        best = max((c[2] for c in s["caps"] if c[2] is not None), default=None)
        rec = {"id": sid, "removed": "sample" if reasons else "captions", "reasons": reasons, "score": best,
               "captions": [{"index": c[0], "text": c[1], "score": c[2], "reasons": c[3]} for c in gone]}
        if reasons:
            removals.append(rec)
            continue
        if gone:
            rec["reasons"] = sorted({x for c in gone for x in c[3]})
            removals.append(rec)
        if s["position"] is not None:
            kept[s["position"]] = [c[0] for c in alive]
    return kept, removals, how


def _caption_overrides(source, kept: dict[int, list[int]], table) -> dict[int, list[str]]:
    """Kept captions per position, as the score job saw them (checked against the source)."""
    full: dict[int, dict[int, str]] = {}
    for p, k, c in zip(*(table.column(x).to_pylist() for x in ("position", "caption_index", "caption"))):
        if p is not None and k is not None and k >= 0:
            full.setdefault(p, {})[k] = c
    out = {}
    for pos, idx in kept.items():
        caps = full.get(pos, {})
        if len(idx) != len(caps):
            out[pos] = [caps[i] for i in idx]
    return out


def _check_same(source, table) -> None:
    """Every position the scores name must hold the same id in `source` (the scores are of this data)."""
    pos, ids = table.column("position").to_pylist(), table.column("id").to_pylist()
    try:
        n = len(source)
    except TypeError:
        return  # a streaming source: positions are checked while writing
    want = {p: i for p, i in zip(pos, ids) if p is not None}
    if len({p for p in want}) != n or any(p >= n for p in want):
        bad = sum(1 for p in want if p >= n)
        raise UsageError(f"the scores cover {len(want)} samples but {source.spec} has {n}" +
                         (f" ({bad} positions past its end)" if bad else "") +
                         ": score this source (re-running the score job resumes it)")
    for p, i in list(want.items())[:: max(1, len(want) // 64)] + list(want.items())[-1:]:
        if source[p].id != i:
            raise UsageError(f"the scores do not match {source.spec}: position {p} is {source[p].id!r} there, "
                             f"{i!r} in the scores")


def filter_source(source, scores, out, rules: Optional[FilterRules] = None, *, to: Optional[str] = None,
                  also_remove: Sequence[str] = (), shard_size: int = 1000, source_options: Optional[dict] = None,
                  progress=None, overwrite: bool = False, **rule_kw) -> dict:
    """Filter `source` (a spec or an opened Source) with its `scores` file into `out` (see `selection.py` for
    the files written); rules as a `FilterRules` or keywords (`min_score=0.28`, `min_side=64`, ...).
    `also_remove`: removals files of other steps (de-duplication) to apply in the same pass. An earlier output
    at `out` is replaced; other files only with `overwrite` (checked before any work)."""
    if rules is None:
        try:
            rules = FilterRules(**rule_kw)
        except TypeError as e:
            raise UsageError(f"unknown filter rule: {e}") from None
    elif rule_kw:
        raise UsageError("give `rules` or rule keywords, not both")
    vet_selection_output(out, to, overwrite=overwrite)
    src = open_source(source, **(source_options or {})) if isinstance(source, str) else source
    info = scores_info(scores)
    table = read_scores(scores)
    _check_same(src, table)
    kept, removals, how = decide(table, rules)
    extra = [read_removals(p) for p in also_remove]
    if extra:
        merged = merge_removals(removals, *extra)
        drop = {i for i, r in merged.items() if r.get("removed") == "sample"}
        pos_of = {i: p for i, p in zip(table.column("id").to_pylist(), table.column("position").to_pylist())}
        for i in drop:
            kept.pop(pos_of.get(i), None)
        removals = sorted(merged.values(), key=lambda r: (pos_of.get(r["id"]) is None, pos_of.get(r["id"]) or 0))
    captions = _caption_overrides(src, kept, table)
    by_reason: dict[str, int] = {}
    for r in removals:
        if r["removed"] == "sample":
            for x in r["reasons"]:
                by_reason[x] = by_reason.get(x, 0) + 1
    pairs_removed: dict[str, int] = {}
    for r in removals:
        for c in r["captions"]:
            for x in c["reasons"]:
                pairs_removed[x] = pairs_removed.get(x, 0) + 1
    summary = {"step": "filter", "source": src.spec, "scores": str(scores), "model": info["model"],
               "rules": {k: v for k, v in asdict(rules).items() if v not in (None, False)},
               "threshold": how, "also_remove": [str(p) for p in also_remove],
               "samples_in": info["samples"], "samples_kept": len(kept),
               "samples_removed": sum(1 for r in removals if r["removed"] == "sample"),
               "removed_by_reason": dict(sorted(by_reason.items())),
               "pairs_in": info["pairs"], "pairs_kept": sum(len(v) for v in kept.values()),
               "pairs_removed_by_reason": dict(sorted(pairs_removed.items()))}
    return write_selection(src, sorted(kept), captions, removals, out, to=to, summary=summary,
                           shard_size=shard_size, progress=progress, overwrite=overwrite)
