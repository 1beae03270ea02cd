"""`dedup_source`: remove exact and near-duplicate images (and optionally duplicate captions) from a source.

Steps, each on what the previous kept:
  1. exact, bytes   samples whose stored image bytes hash equal (the same file copied): keep the first in
                    source order (or the best-scored with keep="score")            reason exact_duplicate
  2. exact, pixels  same decoded pixels and size (re-saved with other settings): same rule  exact_duplicate
  3. near           embeddings with cosine >= 1 - eps (`near.py`: faiss range search for moderate n, SemDeDup
                    clustering for large n), keep rule `keep` (default "central")   reason near_duplicate
                    eps="auto" (default) measures the radius on the data (`radius.py`); a step that would
                    remove more than `max_removed` of the images is refused before anything is written
  4. captions       (captions=True) samples whose first caption equals another's after normalising case,
                    spaces and punctuation, or whose caption embeddings are within `caption_eps`: keep the
                    first                                                          reason duplicate_caption

Embeddings: `features="pixels"` (default) uses a model-free 16x16 grey descriptor (`facts.pixel_descriptor`:
copies that were resized or re-encoded, not crops or shifts); `features="model"` uses the model's image
embeddings (semantic near-duplicates, as SemDeDup), which only separate distinct images as well as the model
does: a weak model puts whole classes within any fixed radius. They come from a scores file that holds them (`scores=`, from
`score_source(..., embeddings=True)`), or are computed by the same resumable job (`<out stem>.images.parquet`).

Samples the score job could not read are left out and recorded as "unreadable:<reason>", as filter does.
The summary records how many near-duplicates each eps in `eps_report` would remove, so a user can pick eps.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from clipforge.curate.job import read_scores, score_source, scores_info
from clipforge.curate.near import METHODS, RANGE_MAX, candidate_pairs, keep_greedy
from clipforge.curate.radius import auto_eps
from clipforge.curate.shifted import merge_pairs, shifted_pairs
from clipforge.curate.selection import vet_selection_output, write_selection
from clipforge.data.sources import open_source
from clipforge.encode import Encoder
from clipforge.errors import UsageError

__all__ = ["dedup_source", "exact_duplicates", "near_duplicates", "KEEP", "FEATURES", "EPS_REPORT"]

KEEP = ("central", "first", "score")
FEATURES = ("pixels", "model")
EPS_REPORT = (0.01, 0.02, 0.05, 0.1, 0.15)
WARN_FRACTION = 0.3  # near-duplicates above this share of the images earn a warning in the summary
MAX_REMOVED = 0.5    # near-duplicates above this share of the images: refused unless `max_removed` says more
log = logging.getLogger("clipforge.curate")


def exact_duplicates(keys: Sequence, priority: np.ndarray) -> dict[int, int]:
    """{removed row: kept row} among rows with equal, non-null keys; the highest priority is kept (ties: the
    earlier row)."""
    groups: dict = {}
    for r, k in enumerate(keys):
        if k is not None:
            groups.setdefault(k, []).append(r)
    out = {}
    for rows in groups.values():
        if len(rows) > 1:
            best = max(rows, key=lambda r: (priority[r], -r))
            out.update({r: best for r in rows if r != best})
    return out


def near_duplicates(x: np.ndarray, eps: float, *, method: str = "auto", priority: Optional[np.ndarray] = None,
                    eps_report: Sequence[float] = (), grids: Optional[np.ndarray] = None,
                    **kw) -> tuple[dict[int, tuple[int, float]], dict, str]:
    """({removed row: (kept row, cosine)} at `eps`, {eps: count removed} for each of `eps_report`, method used).
    Candidate pairs are found once at the largest eps and re-thresholded for the smaller ones. `grids` (n, 1024)
    uint8: the images' pixel grids, to find copies shifted by a cell too (`shifted.py`; exact search, so only
    where the method is "range")."""
    top = max([eps, *eps_report])
    pairs = candidate_pairs(x, top, method, **kw)
    if grids is not None and pairs.method == "range":
        pairs = merge_pairs(pairs, shifted_pairs(grids, top), method="range+shifted")
    counts = {float(e): len(keep_greedy(x, pairs.at(e), priority)) for e in eps_report}
    return keep_greedy(x, pairs.at(eps), priority), counts, pairs.method


_PUNCT = re.compile(r"[^\w\s]+")


def _norm_caption(text: Optional[str]) -> Optional[str]:
    if not text:
        return None
    return " ".join(_PUNCT.sub(" ", text.lower()).split()) or None


def _vectors(column) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-size-list column with nulls -> (rows that have a vector, (m, d) float32)."""
    col = column.combine_chunks()
    valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
    d = col.type.list_size
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    x = flat.reshape(-1, d)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.flatnonzero(valid), x / np.maximum(n, 1e-12)  # float16 storage: renormalise


def _grids(column, rows: list) -> Optional[np.ndarray]:
    """(len(rows), 1024) uint8 pixel grids of these sample rows, read from Arrow without Python lists; None
    when any of them has none."""
    col = column.combine_chunks()
    valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
    if not valid[rows].all():
        return None
    flat = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)  # valid rows only
    at = np.cumsum(valid) - 1  # sample row -> row of flat
    return np.ascontiguousarray(flat[at[rows]], dtype=np.uint8)


def dedup_source(source, out, *, model=None, scores=None, eps: Union[float, str] = "auto", method: str = "auto",
                 features: str = "pixels", keep: str = "central", max_removed: float = MAX_REMOVED, exact: bool = True, captions: bool = False,
                 caption_eps: float = 0.02, eps_report: Sequence[float] = EPS_REPORT, to: Optional[str] = None,
                 n_clusters: Optional[int] = None, seed: int = 0, batch_size: int = 256, workers: int = 0,
                 device=None, precision: str = "auto", shard_size: int = 1000,
                 source_options: Optional[dict] = None, progress=None, executor: str = "local",
                 executor_options: Optional[dict] = None, engine: str = "torch",
                 threads: Optional[int] = None, overwrite: bool = False) -> dict:
    """De-duplicate `source` (a spec or an opened Source) into `out` (see `selection.py` for the files).

    Give `scores` (a scores file with image embeddings, or pixel descriptors for features="pixels") or `model`
    (embeddings are then computed by the resumable score job into `<out stem>.images.parquet`; `executor`,
    `executor_options`, `engine`, `threads` are that job's, see `score_source`).
    keep: "central" (nearest its group's centre), "first" (source order) or "score" (best caption score;
    needs scores with captions). eps: the near-duplicate radius (cosine >= 1 - eps), or "auto" (measured on the
    data: `radius.auto_eps`). max_removed: the largest share of the readable images the near step may remove;
    beyond it the call is refused with the counts at other radii, nothing written (the scores are kept, so a
    second call with another eps costs no encoding). An earlier output at `out` is replaced; other files only with `overwrite`
    (`selection.vet_selection_output`, checked before any work).
    """
    if keep not in KEEP:
        raise UsageError(f"`keep` {keep!r}: choose from {list(KEEP)}")
    if not (eps == "auto" or (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0.0 <= eps < 1.0)):
        raise UsageError(f"`eps` must be \"auto\" or a number in [0, 1), got {eps!r}")
    if not (isinstance(max_removed, (int, float)) and 0.0 <= max_removed <= 1.0):
        raise UsageError(f"`max_removed` must be a fraction in [0, 1], got {max_removed!r}")
    if features not in FEATURES:
        raise UsageError(f"`features` {features!r}: choose from {list(FEATURES)}")
    if method not in METHODS:
        raise UsageError(f"`method` {method!r}: choose from {list(METHODS)}")
    if (model is None) == (scores is None):
        raise UsageError("give `model` (to embed the images) or `scores` (a scores file holding embeddings)")
    src = open_source(source, **(source_options or {})) if isinstance(source, str) else source
    paths, _ = vet_selection_output(out, to, overwrite=overwrite)
    if scores is None:
        stem = paths["data"] / "images" if paths["format"] == "wds" else paths["data"].with_suffix("")
        scores = Path(f"{stem}.images.parquet")
        spec = isinstance(source, str) and executor != "local"  # workers open the source from its spec
        score_source(source if spec else src, model, scores, batch_size=batch_size, workers=workers,
                     device=device, precision=precision, texts=captions, lang=False,
                     embeddings=features == "model", pixel_features=features == "pixels", progress=progress,
                     source_options=source_options if spec else None, executor=executor,
                     executor_options=executor_options, engine=engine, threads=threads)
    info = scores_info(scores)
    table = read_scores(scores)
    col = "image_emb" if features == "model" else "pixel_feat"
    if col not in table.column_names:
        raise UsageError(f"{scores} holds no {col} (score with {'embeddings' if col == 'image_emb' else 'pixel_features'}"
                         f" kept), or give `model`")
    if keep == "score" and "score" not in table.column_names or keep == "score" and not info["options"]["texts"]:
        raise UsageError("`keep`='score' needs a scores file with caption scores")
    # one row per usable sample: its first row carries the sample's facts and vector
    first = table.filter(table.column("skip_reason").is_null())
    ids_all = first.column("id").to_pylist()
    seen, rows = set(), []
    for r, i in enumerate(ids_all):
        if i not in seen:
            seen.add(i)
            rows.append(r)
    samples = first.take(rows)
    ids = samples.column("id").to_pylist()
    pos = samples.column("position").to_pylist()
    n = len(ids)
    best = {}
    if info["options"]["texts"]:
        for i, s in zip(first.column("id").to_pylist(), first.column("score").to_pylist()):
            if s is not None:
                best[i] = max(best.get(i, -2.0), s)
    prio = (np.array([best.get(i, -2.0) for i in ids]) if keep == "score"
            else -np.arange(n, dtype=np.float64))  # "first" and exact steps: source order
    removed: dict[int, dict] = {}
    if exact:
        for key, what in (("bytes_hash", "bytes"), ("pixel_hash", "pixels")):
            alive = [r for r in range(n) if r not in removed]
            dup = exact_duplicates([samples.column(key)[r].as_py() for r in alive], prio[alive])
            for a, b in dup.items():
                removed[alive[a]] = {"reason": "exact_duplicate", "of": alive[b], "how": what, "similarity": 1.0}
    have, x = _vectors(samples.column(col))
    at = {r: k for k, r in enumerate(have.tolist())}  # sample row -> row of x
    alive = [r for r in at if r not in removed]
    xa = x[[at[r] for r in alive]]
    calibration = None
    if eps == "auto":
        calibration = auto_eps(xa, seed=seed)
        eps = calibration["eps"]
    grids = None  # the shift stage: pixel grids (older scores files have none), exact search only
    exact_search = method == "range" or (method == "auto" and len(alive) <= RANGE_MAX)
    if features == "pixels" and exact_search and "pixel_grid" in samples.column_names:
        grids = _grids(samples.column("pixel_grid"), alive)
    near, counts, used = near_duplicates(xa, eps, method=method, eps_report=eps_report, grids=grids,
                                         priority=None if keep == "central" else prio[alive],
                                         **({"n_clusters": n_clusters, "seed": seed} if method != "range" else {}))
    if alive and len(near) > max_removed * len(alive):
        at_eps = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        how = (f" (measured on the data: {calibration['factor']} x the median distance "
               f"{calibration['scale']:.4g} to the {calibration['k']}th neighbour)" if calibration else "")
        raise UsageError(f"eps {eps:.4g}{how} would remove {len(near)} of {len(alive)} images as near-duplicates, "
                         f"more than `max_removed` {max_removed:g}: the {features} features do not separate these "
                         f"images at this radius (removed at other eps: {at_eps}); no output was written: give a "
                         f"smaller `eps`, "
                         + ("`features`='pixels', " if features == "model" else "")
                         + "or a larger `max_removed` if they really are duplicates")
    for a, (b, s) in near.items():
        removed[alive[a]] = {"reason": "near_duplicate", "of": alive[b], "how": features, "similarity": s}
    cap_removed = 0
    if captions:
        cap_removed = _caption_duplicates(samples, removed, caption_eps, model, info, progress)
    removals = []
    for r in removed:
        d = removed[r]
        removals.append({"id": ids[r], "removed": "sample", "reasons": [d["reason"]], "score": best.get(ids[r]),
                         "captions": [], "duplicate_of": ids[d["of"]], "similarity": round(float(d["similarity"]), 6),
                         "how": d["how"], "_pos": pos[r]})
    skips = table.filter(table.column("skip_reason").is_valid())
    for i, p, why in zip(*(skips.column(c).to_pylist() for c in ("id", "position", "skip_reason"))):
        removals.append({"id": i, "removed": "sample", "reasons": [f"unreadable:{why}"], "score": None,
                         "captions": [], "_pos": -1 if p is None else p})  # not in the output either: say why
    removals.sort(key=lambda d: d["_pos"])  # source order
    for d in removals:
        del d["_pos"]
    kept = sorted(pos[r] for r in range(n) if r not in removed)
    warnings = []
    if len(alive) >= 20 and len(near) > WARN_FRACTION * len(alive):
        warnings.append(f"eps {eps} marks {len(near)} of {len(alive)} images as near-duplicates: the {features} "
                        f"features may not separate distinct images (a model that maps a whole class to one point "
                        f"does this); check the counts at other eps and the report"
                        + (", or try `features`='pixels'" if features == "model" else ", or use a smaller `eps`"))
        log.warning(warnings[-1])
    by_reason: dict[str, int] = {}
    for d in removals:
        by_reason[d["reasons"][0]] = by_reason.get(d["reasons"][0], 0) + 1
    summary = {"step": "dedup", "source": src.spec, "scores": str(scores), "model": info["model"],
               "features": features, "eps": eps, "eps_auto": calibration, "max_removed": max_removed, "method": used, "keep": keep, "exact": exact,
               "captions": captions, "caption_eps": caption_eps if captions else None,
               "samples_in": n + info["skipped"]["total"], "unreadable": info["skipped"]["total"],
               "samples_kept": len(kept), "samples_removed": len(removals),
               "removed_by_reason": dict(sorted(by_reason.items())),
               "exact_by": {w: sum(1 for d in removed.values() if d["reason"] == "exact_duplicate" and d["how"] == w)
                            for w in ("bytes", "pixels")},
               "near_removed_at_eps": {str(k): v for k, v in sorted(counts.items())}, "warnings": warnings}
    return write_selection(src, kept, {}, removals, out, to=to, summary=summary, shard_size=shard_size,
                           progress=progress, overwrite=overwrite)


def _caption_duplicates(samples, removed: dict, caption_eps: float, model, info: dict, progress=None) -> int:
    """Mark samples whose first caption duplicates a kept sample's (normalised text, then embeddings)."""
    if not info["options"]["texts"]:
        raise UsageError("`captions` needs caption scores in the scores file (score with texts)")
    caps = samples.column("caption").to_pylist()
    alive = [r for r in range(len(caps)) if r not in removed and caps[r]]
    before = len(removed)
    dup = exact_duplicates([_norm_caption(caps[r]) for r in alive], -np.arange(len(alive), dtype=np.float64))
    for a, b in dup.items():
        removed[alive[a]] = {"reason": "duplicate_caption", "of": alive[b], "how": "text", "similarity": 1.0}
    if model is not None and caption_eps > 0:
        alive = [r for r in alive if r not in removed]
        enc = model if isinstance(model, Encoder) else Encoder.load(info["model"], precision=info["precision"])
        t = enc.encode_texts([caps[r] for r in alive], progress=progress, desc="captions").numpy()
        near, _, _ = near_duplicates(t, caption_eps, priority=-np.arange(len(alive), dtype=np.float64))
        for a, (b, s) in near.items():
            removed[alive[a]] = {"reason": "duplicate_caption", "of": alive[b], "how": "caption_embedding",
                                 "similarity": s}
    return len(removed) - before
