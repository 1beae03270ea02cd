"""Recaptioning (DreamLIP, FuseCap, Image Textualization): a captioning model writes a synthetic caption for
every image, and the result is a new source whose samples carry it beside their original captions.

    recaption_source(open_source("jsonl:pairs.jsonl"), Captioner.load("runs/coca/final"), "recaptioned")
    # -> recaptioned/samples.jsonl: one row per readable image:
    #    {"id", "image" (absolute path), "captions", "synthetic_caption", "original_captions", "label"}

`captions` (what training and `curate score` read, the first one first) is chosen by `order`: "original_first"
(the originals, then the synthetic one: a `clip+multipos` run gets both as positives), "synthetic_first", or
"synthetic" (the synthetic caption alone). Open it with `jsonl:DIR/samples.jsonl`.

Resumable: the source's positions are cut into parts of `part_size`; a captioned part is written atomically
as `parts/part-NNNNNN.jsonl` and then listed in `job.json` (also written atomically), so a job killed at any
moment re-runs only the parts not listed. When all are done they are joined into `samples.jsonl` (atomically)
with a `summary.json`. Re-running with another source, model or decoding setting is refused unless `overwrite`.
Sources must be random-access (folders, manifests): each row needs its image's file.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from clipforge.atomic import atomic_write_json, atomic_write_text
from clipforge.data.decode import SkipCounter
from clipforge.encode.batches import plan_batches
from clipforge.encode.captioner import DEFAULTS, Captioner
from clipforge.errors import UsageError
from clipforge.output_dirs import claim_output_dir
from clipforge.progress import Progress

__all__ = ["recaption_source", "ORDERS", "RUN_KIND"]

RUN_KIND = "recaption"
ORDERS = ("original_first", "synthetic_first", "synthetic")


def _captions(original: list, synthetic: str, order: str) -> list:
    if not synthetic.strip():  # a model that generated nothing adds no caption (counted as `empty_synthetic`)
        return list(original)
    if order == "synthetic":
        return [synthetic]
    return [synthetic, *original] if order == "synthetic_first" else [*original, synthetic]


def _read_job(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def recaption_source(source, captioner: Captioner, out_dir, *, order: str = "original_first", batch_size: int = 32,
                     part_size: int = 1024, workers: int = 0, overwrite: bool = False,
                     progress: Optional[bool] = None, **decode) -> dict:
    """Caption every readable image of `source` into the source folder `out_dir` (see the module docstring);
    `decode`: the Captioner's options (method, max_tokens, min_tokens, beams, top_p, temperature, seed).
    Returns the summary (also `summary.json`)."""
    if order not in ORDERS:
        raise UsageError(f"`order` must be one of {', '.join(ORDERS)}, got {order!r}")
    if not getattr(source, "random_access", False):
        raise UsageError(f"{source.spec}: recaptioning needs a random-access source (a folder or a manifest), so "
                         "that each row can name its image file")
    if int(part_size) < 1 or int(batch_size) < 1:
        raise UsageError("`part_size` and `batch_size` must be >= 1")
    options = {**{k: DEFAULTS[k] for k in ("method", "max_tokens", "min_tokens", "beams", "top_p", "temperature")},
               "seed": None, **decode}
    job = {"source": source.spec, "model": captioner.ref or "model", "order": order, "part_size": int(part_size),
           "decode": options, "size": len(source)}
    out, continued = claim_output_dir(out_dir, RUN_KIND, overwrite=overwrite)
    job_path, parts_dir = out / "job.json", out / "parts"
    done: list[int] = []
    if continued:
        stored = _read_job(job_path)
        if stored is not None and {k: v for k, v in stored.items() if k != "done"} != job:
            raise UsageError(f"`out_dir` {out} holds a recaption job of another source, model or setting: pass "
                             "`overwrite` to start it again")
        done = list(stored.get("done", [])) if stored else []
        if (out / "summary.json").is_file() and stored is not None:
            return json.loads((out / "summary.json").read_text(encoding="utf-8"))
    parts_dir.mkdir(exist_ok=True)
    atomic_write_json(job_path, {**job, "done": sorted(done)})
    positions = list(range(len(source)))
    parts = [positions[i:i + int(part_size)] for i in range(0, len(positions), int(part_size))]
    total, t0, captioned = {}, time.perf_counter(), 0
    with Progress(sum(len(p) for i, p in enumerate(parts) if i not in done), desc="recaption", unit="image",
                  progress=progress) as bar:
        for i, part in enumerate(parts):
            if i in done:
                continue
            rows, part_skips = [], SkipCounter()
            for batch, caps in captioner.caption_source(source, batch_size, batches=plan_batches(part, batch_size),
                                                        workers=workers, skipped=part_skips, progress=False,
                                                        **options):
                for pos, cap in zip(batch.positions, caps):
                    s = source[pos]
                    rows.append({"id": s.id, "image": os.path.abspath(s.path), "captions": _captions(
                        list(s.captions), cap, order), "synthetic_caption": cap,
                        "original_captions": list(s.captions), "label": s.label})
                bar.update(len(batch) + batch.skipped.total)
            atomic_write_text(parts_dir / f"part-{i:06d}.jsonl",
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            atomic_write_json(parts_dir / f"part-{i:06d}.skips.json", dict(part_skips.items()))
            done.append(i)
            atomic_write_json(job_path, {**job, "done": sorted(done)})
            captioned += len(rows)
    text = "".join((parts_dir / f"part-{i:06d}.jsonl").read_text(encoding="utf-8") for i in range(len(parts)))
    atomic_write_text(out / "samples.jsonl", text)
    for i in range(len(parts)):  # the skips of every part, those of earlier runs included
        counts = json.loads((parts_dir / f"part-{i:06d}.skips.json").read_text(encoding="utf-8"))
        total.update({r: total.get(r, 0) + n for r, n in counts.items()})
    empty = sum(not json.loads(line)["synthetic_caption"].strip() for line in text.splitlines())
    summary = {"source": source.spec, "model": job["model"], "spec": f"jsonl:{out / 'samples.jsonl'}",
               "samples": text.count("\n"), "captioned_now": captioned, "parts": len(parts), "empty_synthetic": empty,
               "skipped": total, "seconds": round(time.perf_counter() - t0, 2), "order": order, "decode": options}
    atomic_write_json(out / "summary.json", summary)
    return summary
