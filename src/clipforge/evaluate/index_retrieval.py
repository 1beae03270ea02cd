"""Zero-shot image<->text retrieval on a clipforge index (`clipforge index build`), with no re-embedding.

An index directory stores one image embedding per item (img_emb/) and one caption embedding per item
(text_emb/: the item's FIRST caption, a zero row when it has none). This module reads both and scores them
with `clipforge.metrics.retrieval.image_text_recall`, the same blocked function (and tie rule) the in-memory
`zeroshot-retrieval` task uses, so for a source with one caption per image the two report the same recall up
to the float16 rounding of the stored vectors.

Protocol differences from the in-memory task, recorded in the result:
- Only one caption per image is stored, so `captions_per_image` is 1 even when the source had several
  (`source_captions` counts them, `dropped_captions` says how many were not stored). Recall with one caption
  is lower than Flickr30K/COCO numbers with five, which count an image->text hit on ANY of its captions.
- Items without a caption (zero text row) are not texts, but their images stay keys for text->image and are
  left out of the image->text numbers (`i2t_n`), as in the in-memory task.
- Files the index build could not read are not in the store; the index's own skip counts are reported.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clipforge.errors import ClipforgeError, UsageError
from clipforge.metrics.retrieval import image_text_ranked_metrics, image_text_recall
from clipforge.retrieval.index_dir import IndexDir, read_info
from clipforge.retrieval.store import EmbeddingStore

__all__ = ["is_index_dir", "index_model_ref", "same_model_ref", "evaluate_index_retrieval"]


def is_index_dir(dataset) -> bool:
    """True for a directory written by `clipforge index build` (it holds index.json and manifest.json)."""
    if not isinstance(dataset, (str, os.PathLike)):
        return False
    return IndexDir(os.path.expanduser(str(dataset))).is_index()


def _canonical(ref: str) -> str:
    """The form build_index records: a checkpoint directory as its absolute path, anything else as given."""
    p = Path(os.path.expanduser(ref))
    return str(p.resolve()) if p.is_dir() else str(ref)


def index_model_ref(index_dir) -> str:
    return str(read_info(index_dir)["model"])


def same_model_ref(ref: str, index_ref: str) -> bool:
    return _canonical(ref) == _canonical(index_ref)


def evaluate_index_retrieval(index_dir, *, ks: Sequence[int] = (1, 5, 10), cutoff: Optional[int] = None,
                             block_size: Optional[int] = None) -> dict:
    """-> {"metrics": {i2t_R@K, ..., t2i_... (+ AP@k, nDCG@k, MRR with a cutoff)}, "num_images", "num_texts",
    "captions_per_image", "source_captions", "dropped_captions", "skipped", "model", "precision"} from the
    stored vectors."""
    info = read_info(index_dir)
    with EmbeddingStore.open(index_dir) as store:
        if "text" not in store.modalities:
            raise UsageError(f"{index_dir}: the index stores no caption embeddings (built from a source "
                             "without captions, or with text off); retrieval needs image-text pairs")
        img, img_ids = store.load("img")  # (N, D) float32 unit rows, (N,) int64
        txt, txt_ids = store.load("text")  # (N, D); zero rows for items without a caption
        meta = store.metadata(["id", "captions"]).to_pydict() if len(img_ids) else {"id": [], "captions": []}
    if not np.array_equal(img_ids, txt_ids) or not np.array_equal(img_ids, np.asarray(meta["id"], np.int64)):
        raise ClipforgeError(f"{index_dir}: image, caption and metadata rows do not line up; the store is damaged")
    if len(img_ids) == 0:
        raise UsageError(f"{index_dir}: the index holds no images")
    has_caption = np.linalg.norm(txt, axis=1) > 0.5  # (N,) stored rows are unit or exactly zero
    if not has_caption.any():
        raise UsageError(f"{index_dir}: no item has a caption; retrieval needs image-text pairs")
    text_to_image = np.flatnonzero(has_caption)  # (M,) text j is item text_to_image[j]'s caption
    metrics = image_text_recall(img, txt[has_caption], text_to_image, ks=ks, block_size=block_size)
    if cutoff is not None:
        metrics.update(image_text_ranked_metrics(img, txt[has_caption], text_to_image, cutoff))
    n_src = [len(json.loads(c)) if c else 0 for c in meta["captions"]]  # captions each item had at build time
    skipped = info.get("skipped") or {"total": len(info.get("bad", {})), "by_reason": {}}
    return {"metrics": metrics, "num_images": int(len(img_ids)), "num_texts": int(has_caption.sum()),
            "captions_per_image": 1, "source_captions": int(sum(n_src)),
            "dropped_captions": int(sum(max(0, n - 1) for n in n_src)),
            "skipped": {"total": int(skipped.get("total", 0)), "by_reason": dict(skipped.get("by_reason", {}))},
            "model": str(info["model"]), "precision": info.get("precision")}
