"""`write_report`: what a curation step threw away, for a person to judge — PNGs and a markdown page.

From the summaries `filter_source` / `dedup_source` write (and the scores and removals files they name):
  - a histogram of pair scores with the threshold marked, kept and removed pairs stacked (filter);
  - counts removed by reason (samples, and pairs for per-caption rules);
  - contact sheets of the removed pairs nearest the threshold (the highest-scoring removed pairs) and of the
    kept pairs nearest it (the lowest-scoring kept ones): what moving the threshold would change;
  - for de-duplication: removals at each eps, and a sheet of the removed near-duplicates least similar to the
    item they duplicate, each beside that item (where a larger eps starts to go wrong).
Images are read back from the step's source (`clipforge.data`: a bad file is a grey tile, never a crash).
Names, paths and captions from the collection or the summary are written through `clipforge.data.display`
(`shown` and its markdown forms): a newline, an escape sequence or a `|` in one cannot forge a line of the
page, break a table, or reach a terminal that shows it raw.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from clipforge.atomic import atomic_write, atomic_write_text
from clipforge.output_dirs import claim_output_dir
from clipforge.curate.job import read_scores
from clipforge.curate.selection import read_removals
from clipforge.data.decode import BadSample
from clipforge.data.display import shown, shown_cell, shown_code, shown_label
from clipforge.data.sources import open_source
from clipforge.data.sources.spec import check_stored_source
from clipforge.data.sources.trust import StoredCommandRefused, accept_stored, stored_spec
from clipforge.errors import UsageError
from clipforge.retrieval.sheet import contact_sheet

__all__ = ["write_report"]


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def _load_summary(s) -> dict:
    if isinstance(s, dict):
        return s
    p = Path(s)
    if not p.is_file():
        raise UsageError(f"summary {str(p)!r} does not exist (filter and dedup write <out>.summary.json)")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{p} is not a curation summary: {e}") from None
    if not isinstance(d, dict) or d.get("step") not in ("filter", "dedup"):
        raise UsageError(f"{p} is not a curation summary (no filter/dedup step)")
    if "source" in d:  # the file's word, not the user's: a `pipe:` command in it is not run unasked
        d["source"] = stored_spec(d["source"], p)
    return d


class _Images:
    """Images of a source by position, read on demand (one pass for a streaming source)."""

    def __init__(self, spec: str):
        try:
            self.source = open_source(spec)
        except StoredCommandRefused:  # the user must hear of it (and of `allow_pipe`), not see grey tiles
            raise
        except Exception:  # noqa: BLE001 - the report still renders, with grey tiles
            self.source = None
        self.cache: dict[int, object] = {}

    def prefetch(self, positions) -> None:
        if self.source is None or getattr(self.source, "random_access", True):
            return
        want = set(positions) - set(self.cache)
        for pos, sample in enumerate(self.source):
            if pos in want:
                self.cache[pos] = self._decode(sample)

    @staticmethod
    def _decode(sample, side: int = 128):
        try:
            im = sample.load_image().copy()
            if max(im.size) < side:  # tiny images (e.g. 32 px digits) are enlarged to be seen
                f = side / max(im.size)
                im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.NEAREST)
            return im
        except BadSample:
            return None
        finally:
            sample.drop_image()

    def __call__(self, hit: dict):
        pos = hit.get("position")
        if pos is None or self.source is None:
            return None
        if pos not in self.cache:
            self.cache[pos] = self._decode(self.source[pos]) if getattr(self.source, "random_access", True) else None
        return self.cache[pos]


def _histogram(scores: np.ndarray, removed: np.ndarray, threshold: Optional[float], path: Path, title: str) -> None:
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    bins = np.linspace(float(scores.min()), float(scores.max()) + 1e-6, 60) if len(scores) else 10
    ax.hist([scores[~removed], scores[removed]], bins=bins, stacked=True, label=["kept", "removed"],
            color=["#4c72b0", "#dd8452"])
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4f}")
    ax.set_xlabel("image-text cosine (per pair)")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def _table(rows: list[tuple], head: tuple) -> list[str]:
    return ["| " + " | ".join(map(shown_cell, head)) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(map(shown_cell, r)) + " |" for r in rows]


def _filter_section(n: int, s: dict, out: Path, k: int) -> list[str]:
    table = read_scores(s["scores"], ["id", "position", "caption_index", "caption", "score"])
    removed_pairs = {}
    removed_samples = set()
    for r in read_removals(s["removals_file"]):
        if r["removed"] == "sample":
            removed_samples.add(r["id"])
        for c in r.get("captions", []):
            removed_pairs[(r["id"], c["index"])] = c["reasons"]
    ids, pos, idx, cap, sc = (table.column(c).to_pylist() for c in ("id", "position", "caption_index", "caption",
                                                                    "score"))
    rows = [(i, p, j, c, v) for i, p, j, c, v in zip(ids, pos, idx, cap, sc) if v is not None]
    gone = np.array([(i, j) in removed_pairs or i in removed_samples for i, _, j, _, _ in rows], bool)
    scores = np.array([r[4] for r in rows], np.float64)
    thr = (s.get("threshold") or {}).get("threshold")
    name = f"filter{n}"
    lines = [f"## Filter: {shown(s['out'])}", "",
             f"Source {shown_code(s['source'])}, scores {shown_code(s['scores'])} (model {shown_code(s['model'])}), "
             f"rules {shown_code(json.dumps(s['rules']))}" + (
                 f", score threshold **{thr:.4f}** ({shown(s['threshold']['rule'])})" if thr is not None else "")
             + ".", "",
             f"Kept {s['samples_kept']} of {s['samples_in']} samples and {s['pairs_kept']} of {s['pairs_in']} pairs.",
             ""]
    if len(scores):
        _histogram(scores, gone, thr, out / f"{name}_scores.png", shown_label(f"pair scores ({s['model']})"))
        lines += [f"![scores]({name}_scores.png)", ""]
    lines += ["Samples removed, by reason (a sample can have several):", ""]
    lines += _table(sorted(s["removed_by_reason"].items(), key=lambda t: -t[1]) or [("none", 0)], ("reason", "samples"))
    if s.get("pairs_removed_by_reason"):
        lines += ["", "Pairs (captions) removed, by reason:", ""]
        lines += _table(sorted(s["pairs_removed_by_reason"].items(), key=lambda t: -t[1]), ("reason", "pairs"))
    if thr is not None and len(scores):
        images = _Images(s["source"])
        below = [rows[i] for i in np.argsort(-scores) if gone[i] and scores[i] < thr][:k]
        above = [rows[i] for i in np.argsort(scores) if not gone[i] and scores[i] >= thr][:k]
        images.prefetch([r[1] for r in below + above])
        for what, sel in (("removed", below), ("kept", above)):
            hits = [{"rank": n_, "id": i, "score": v, "caption": c, "position": p} for n_, (i, p, _, c, v)
                    in enumerate(sel)]
            fn = f"{name}_{what}_near_threshold.png"
            contact_sheet(hits, out / fn, thumb=128, cols=5, load=images, overwrite=True,
                          title=f"{what} pairs nearest the threshold {thr:.4f} ({len(hits)})")
            lines += ["", f"The {len(hits)} {what} pairs nearest the threshold "
                          f"({'highest-scoring removed' if what == 'removed' else 'lowest-scoring kept'}):", "",
                      f"![{what}]({fn})"]
    return lines + [""]


def _dedup_section(n: int, s: dict, out: Path, k: int) -> list[str]:
    rem = read_removals(s["removals_file"])
    name = f"dedup{n}"
    lines = [f"## De-duplication: {shown(s['out'])}", "",
             f"Source {shown_code(s['source'])}, features {shown_code(s['features'])} (model "
             f"{shown_code(s['model'])}), eps **{s['eps']}** (cosine >= {1 - s['eps']:.3f}), method "
             f"{shown_code(s['method'])}, keep rule {shown_code(s['keep'])}."
             + (f" The radius was measured on the data: {a['factor']} x the median distance {a['scale']:.4g} from an "
                f"image to its {a['k']}th nearest neighbour ({a['sampled']} images sampled)."
                if (a := s.get("eps_auto")) else ""), "",
             f"Kept {s['samples_kept']} of {s['samples_in']} samples.", ""]
    lines += [f"> **Warning:** {shown(w)}" for w in s.get("warnings", [])] + ([""] if s.get("warnings") else [])
    lines += _table(sorted(s["removed_by_reason"].items(), key=lambda t: -t[1]) or [("none", 0)], ("reason", "samples"))
    lines += ["", "Near-duplicates that each eps would remove (after the exact steps):", ""]
    lines += _table([(e, c) for e, c in s["near_removed_at_eps"].items()], ("eps", "removed"))
    near = sorted((r for r in rem if "near_duplicate" in r["reasons"] or "duplicate_caption" in r["reasons"]),
                  key=lambda r: r.get("similarity", 1.0))[:k]
    if near:
        table = read_scores(s["scores"], ["id", "position", "caption"])
        where = {}
        for i, p, c in zip(*(table.column(x).to_pylist() for x in ("id", "position", "caption"))):
            where.setdefault(i, (p, c))
        images = _Images(s["source"])
        hits = []
        for r in near:
            for role, sid in (("kept", r["duplicate_of"]), ("removed", r["id"])):
                p, c = where.get(sid, (None, ""))
                hits.append({"rank": len(hits), "id": sid, "score": r.get("similarity"),
                             "caption": f"{role}: {c or ''}", "position": p})
        images.prefetch([h["position"] for h in hits if h["position"] is not None])
        fn = f"{name}_least_similar.png"
        contact_sheet(hits, out / fn, thumb=112, cols=6, load=images, overwrite=True,
                      title=f"removed near-duplicates least similar to what they duplicate (kept | removed)")
        lines += ["", "The removed near-duplicates least similar to the kept item they duplicate (pairs: kept, "
                      "removed; the number is their cosine):", "", f"![near duplicates]({fn})"]
    return lines + [""]


def write_report(summaries: Sequence, out_dir, *, examples: int = 15, allow_pipe: bool = False) -> dict:
    """Render a report of one or more curation steps (their summary files or dicts) into `out_dir`
    (report.md plus PNGs); returns {"report": path, "images": [...]}.

    The images come from the source each summary records; a summary file's `pipe:` source (webdataset shards
    read from a shell command) is run only with `allow_pipe` (`clipforge.data.sources.trust`)."""
    if not summaries:
        raise UsageError("`summaries`: name at least one filter or dedup summary file")
    if examples < 1:
        raise UsageError(f"`examples` must be >= 1, got {examples}")
    loaded = [_load_summary(x) for x in summaries]
    loaded = [{**s, "source": accept_stored(s.get("source"), allow_pipe)} for s in loaded]
    for s in loaded:  # a refused stored command fails before the report folder is claimed
        check_stored_source(s["source"])
    out, _ = claim_output_dir(out_dir, "curate-report", overwritable=False,
                              recognise=lambda p: (p / "report.md").is_file())
    lines = ["# Curation report", ""]
    for n, s in enumerate(loaded):
        lines += (_filter_section if s["step"] == "filter" else _dedup_section)(n, s, out, examples)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return {"report": str(path), "images": sorted(str(p) for p in out.glob("*.png"))}
