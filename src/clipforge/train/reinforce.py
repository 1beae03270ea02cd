"""Dataset reinforcement (MobileCLIP): run the teacher(s) once, offline, and store what distillation needs.

    summary = reinforce(open_source("jsonl:train.jsonl"), ["runs/teacher/final"], "train-reinforced",
                        augmentations=5)

For every readable sample with a caption, `augmentations` parameter sets of the train augmentation are drawn
(crop box + flip, `models.transforms.AugParams`, from a random resized crop policy: `crop_scale` / `hflip`,
by default the first teacher's train preprocessing), each teacher embeds every one of those views (its own
resolution and normalisation, the same crop), and embeds every caption — the source's and any synthetic ones
(`synthetic_captions`: a JSONL file of {"id": ..., "captions": [...]}). The result is a store
(`clipforge.data.reinforced`) that training reads with `data.reinforcement: DIR`: the student replays one stored
view per step and distils towards the stored embeddings, so no teacher runs while it trains.

The teachers encode through `clipforge.encode` (one `Encoder` each: device, precision, batching, safe
decoding, skips counted by reason). Views are drawn from a seed and the decoded image's content, so every
teacher, every pass and every worker count sees the same crops. The store is written atomically (a crash
leaves no half store); a rerun recomputes it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from clipforge.atomic import atomic_directory
from clipforge.output_dirs import vet_output_dir
from clipforge.data.decode import SkipCounter
from clipforge.data.reinforced import EMBED_DTYPES, MANIFEST, write_store
from clipforge.encode import Encoder
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.transforms import TrainTransform

log = logging.getLogger(__name__)


class AugmentedViews:
    """Image -> ((V, 3, H, W) views, info): V augmentation draws (seeded by `seed` and the image's pixels)
    rendered by `render` (a `TrainTransform`: its size and normalisation); info = {"size", "params" (V, 5)}."""

    def __init__(self, policy: TrainTransform, render: TrainTransform, views: int, seed: int):
        self.policy, self.render, self.views, self.seed = policy, render, int(views), int(seed)

    def params_for(self, img) -> list:
        content = zlib.crc32(img.tobytes()) ^ (img.size[0] << 16) ^ img.size[1]
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, content]).generate_state(1)[0]))
        return [self.policy.sample_params(*img.size, generator=g) for _ in range(self.views)]

    def __call__(self, img):
        img = img.convert("RGB")
        params = self.params_for(img)
        views = torch.stack([self.render.apply(img, p) for p in params])             # (V, 3, H, W)
        return views, {"size": img.size, "params": np.asarray([p.as_row() for p in params], np.float32)}


def read_synthetic_captions(path) -> dict[str, list[str]]:
    """{"id": ..., "captions": [...]} per line -> {id: captions}."""
    out: dict[str, list[str]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"`synthetic_captions`: cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            caps = row["captions"] if isinstance(row["captions"], list) else [row["captions"]]
            out.setdefault(str(row["id"]), []).extend(str(c) for c in caps if str(c).strip())
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"`synthetic_captions` {path}, line {n}: expected {{\"id\": ..., \"captions\": [...]}}")
    return out


def reinforce(source, teachers: Sequence[str], out_dir, *, augmentations: int = 5, seed: int = 0,
              synthetic_captions: Optional[str] = None, crop_scale: Optional[Sequence[float]] = None,
              hflip: Optional[bool] = None, batch_size: int = 64, workers: int = 0, device=None,
              precision: str = "auto", embed_dtype: str = "float16", progress: Optional[bool] = None,
              overwrite: bool = False) -> dict:
    """Write a reinforcement store for `source` to `out_dir`; return a summary (counts, skips, seconds).
    `out_dir` may be new, empty or an earlier store; anything else is refused unless `overwrite`."""
    if not teachers:
        raise UsageError("`teachers`: give at least one teacher model")
    if int(augmentations) < 1:
        raise UsageError(f"`augmentations` must be >= 1, got {augmentations}")
    if embed_dtype not in EMBED_DTYPES:
        raise UsageError(f"`embed_dtype` must be one of {', '.join(EMBED_DTYPES)}, got {embed_dtype!r}")
    vet = dict(kind="reinforcement-store", overwrite=overwrite, recognise=lambda p: (p / MANIFEST).is_file())
    vet_output_dir(out_dir, **vet)  # before the teachers run
    t0 = time.perf_counter()
    encoders = [Encoder.load(t, device=device, precision=precision) for t in teachers]
    first = encoders[0].model
    cfg = first.config.preprocess
    if crop_scale is not None:
        lo, hi = (float(v) for v in crop_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise UsageError(f"`crop_scale` must satisfy 0 < low <= high <= 1, got {crop_scale}")
        cfg = dataclasses.replace(cfg, crop_scale=(lo, hi))
    if hflip is not None:
        cfg = dataclasses.replace(cfg, hflip=bool(hflip))
    policy = TrainTransform(first.config.image_size, cfg)
    synthetic = read_synthetic_captions(synthetic_captions) if synthetic_captions else {}

    ids, sizes, params, captions, image_embeds, skipped = None, None, None, None, [], SkipCounter()
    for e, enc in enumerate(encoders):
        views = AugmentedViews(policy, enc.model.preprocess_train, augmentations, seed)
        pass_skips = SkipCounter()
        rows = {"ids": [], "sizes": [], "params": [], "captions": [], "feats": []}
        for batch in enc.iter_source(source, batch_size, workers=workers, require="caption", skipped=pass_skips,
                                     progress=progress, desc=f"teacher {e + 1}/{len(encoders)}", transform=views):
            rows["ids"] += batch.ids
            rows["captions"] += [list(c) + synthetic.get(i, []) for c, i in zip(batch.captions, batch.ids)]
            rows["sizes"] += [info["size"] for info in batch.info]
            rows["params"] += [info["params"] for info in batch.info]
            if len(batch):
                rows["feats"].append(batch.feats.numpy())                        # (B, V, D_e)
        if not rows["ids"]:
            raise ClipforgeError(f"no readable sample with a caption in {getattr(source, 'spec', source)}")
        if ids is None:
            ids, sizes, captions, skipped = rows["ids"], rows["sizes"], rows["captions"], pass_skips
            params = np.stack(rows["params"])                                      # (S, V, 5)
        elif rows["ids"] != ids or not np.array_equal(np.stack(rows["params"]), params):
            raise ClipforgeError("the source changed between teacher passes (different samples or images)")
        image_embeds.append(np.concatenate(rows["feats"]))
    flat = [c for caps in captions for c in caps]
    text_embeds = [enc.encode_texts(flat, progress=progress, desc="captions").numpy() for enc in encoders]
    meta = {"source": getattr(source, "spec", str(source)), "augmentations": int(augmentations), "seed": int(seed),
            "policy": {"crop_scale": list(cfg.crop_scale), "hflip": bool(cfg.hflip)},
            "teachers": [{"ref": str(t), "embed_dim": int(enc.embed_dim), "precision": enc.precision}
                         for t, enc in zip(teachers, encoders)],
            "synthetic_captions": sum(len(synthetic.get(i, [])) for i in ids)}
    atomic_directory(out_dir, **vet, write=lambda tmp: write_store(
        tmp, meta=meta, ids=ids, image_sizes=np.asarray(sizes), aug_params=params, captions=captions,
        image_embeds=image_embeds, text_embeds=text_embeds, embed_dtype=embed_dtype))
    summary = {"out": str(out_dir), "num_samples": len(ids), "num_captions": len(flat),
               "augmentations": int(augmentations), "teachers": [str(t) for t in teachers],
               "skipped": skipped.as_dict(), "seconds": round(time.perf_counter() - t0, 2)}
    log.info("reinforced %d samples (%d captions, %d views each) into %s", len(ids), len(flat), augmentations,
             out_dir)
    return summary
