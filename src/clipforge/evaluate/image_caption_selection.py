"""The `image-caption-selection` task (compositionality: SugarCrepe, Winoground, `data negatives` sets).

The dataset is a selection JSONL (`clipforge.data.selection_set`): instances of one image with its positive
caption and hard negatives, and/or Winoground pairs of pairs. Every distinct image and caption is embedded
once; each instance is scored by `clipforge.metrics.caption_selection` (CLIP_benchmark's rule, ties to the
lower index): accuracy overall and per negative type, and Winoground's text / image / group scores where the
set has groups. An instance whose image cannot be read is skipped and counted (`skipped`), with the bad
lines of the file (`bad_record`).
"""
from __future__ import annotations

from typing import Optional

from clipforge.data.selection_set import read_selection_set
from clipforge.data.sources.filelist import FileListSource
from clipforge.encode import as_encoder
from clipforge.errors import UsageError
from clipforge.evaluate.tasks import TASKS, EvalTask, TaskResult
from clipforge.metrics.caption_selection import selection_metrics

__all__ = ["evaluate_image_caption_selection", "ImageCaptionSelection"]


def evaluate_image_caption_selection(model, path, *, image_root: Optional[str] = None, batch_size: int = 256,
                                     workers: int = 0, progress: Optional[bool] = None) -> dict:
    """-> {"metrics": {acc, acc/<type>, text_score, image_score, group_score, ...; n}, "counts", "skipped"}.
    `model`: a loaded model or an `Encoder`; `path`: a selection JSONL."""
    encoder = as_encoder(model)
    instances, skipped = read_selection_set(path, image_root=image_root)
    paths = list(dict.fromkeys(p for inst in instances for p in inst.images))
    feats = encoder.encode_source(FileListSource(paths), batch_size, workers=workers, progress=progress,
                                  desc="selection images")
    skipped.merge(feats.skipped)
    row = {sid: i for i, sid in enumerate(feats.ids)}
    kept = []
    for inst in instances:
        if all(p in row for p in inst.images):
            kept.append(inst)
        else:
            skipped.add(f"line {inst.line}", "image_unreadable")
    if not kept:
        raise UsageError(f"{path}: no instance has readable images")
    texts = list(dict.fromkeys(c for inst in kept for c in inst.captions))
    text_row = {t: i for i, t in enumerate(texts)}
    text_emb = encoder.encode_texts(texts, batch_size, progress=progress, desc="selection captions").numpy()
    image_emb = feats.feats.numpy()
    metrics, counts = selection_metrics(
        (image_emb[[row[p] for p in inst.images]], text_emb[[text_row[c] for c in inst.captions]], inst.type)
        for inst in kept)
    metrics["n"] = len(kept)
    return {"metrics": metrics, "counts": counts, "skipped": skipped.as_dict()}


@TASKS.register("image-caption-selection")
class ImageCaptionSelection(EvalTask):
    """Hard-negative caption selection (SugarCrepe-style accuracy per negative type; Winoground text / image /
    group scores) on a selection JSONL."""

    options = ()
    opens_dataset = True

    def run(self, encoder, dataset, ctx, **_) -> TaskResult:
        res = evaluate_image_caption_selection(encoder, dataset.name, image_root=ctx.image_root,
                                               batch_size=ctx.batch_size, workers=ctx.workers,
                                               progress=ctx.progress)
        return TaskResult(res["metrics"], {}, {"counts": res["counts"], "skipped": res["skipped"]})
