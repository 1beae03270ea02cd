"""Projector alignment from frozen features: encode every image and caption once, then train on the cache.

When both towers are frozen up to their projection heads (pretrained towers locked: `model.lock_image` and
`model.lock_text`; or clipforge towers locked whole), a training step only needs each sample's frozen
features. `FeatureCache.build` runs the image encoder over the source once per stored view (view 0: the eval
preprocessing; views 1..V-1: the training augmentation, seeded per (view, image)) and the text encoder over
every caption, in chunks written atomically to `DIR/chunk_NNNNN.npz` beside a manifest: a crash resumes at the
first missing chunk, and a cache made for another model, source or view count is refused, never mixed in.
Bad images are skipped and counted, as in the pixel loader.

`FeatureCache.loader(...)` then yields batches of cached features in the pixel loader's epoch order and with
its position bookkeeping (so a resumed run continues bit-exactly): each image takes one stored view and one of
its captions, drawn from (seed, epoch, image). The heads run on the batch: thousands of steps per second.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from clipforge.atomic import atomic_write_text
from clipforge.data.decode import SkipCounter
from clipforge.data.loader import epoch_order, make_pair_loader
from clipforge.errors import ClipforgeError, UsageError
from clipforge.losses import loss_needs
from clipforge.models.projection import is_pretrained_tower, tower_features
from clipforge.progress import Progress
from clipforge.train.optim import tower_is_frozen

log = logging.getLogger("clipforge.train")

CACHE_VERSION = 1
CHUNK = 2048  # source samples per chunk file
MAX_VIEWS = 64


def _fingerprint(model, source, views: int) -> dict:
    h = hashlib.sha256()
    for tower in (model.visual, model.text):
        head = getattr(tower, "head", None) if is_pretrained_tower(tower) else None
        skip = {id(p) for p in head.parameters()} if head is not None else set()
        for name, t in tower.state_dict(keep_vars=True).items():
            if id(t) in skip:
                continue
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
    return {"version": CACHE_VERSION, "encoders": h.hexdigest()[:16], "source": repr(source), "n": len(source),
            "views": int(views), "preprocess": repr(model.config.preprocess),
            "image_size": model.config.vision.image_size, "context_length": model.config.text.context_length}


class FeatureCache:
    """In-memory view of a finished cache: image features (V, N, Fi), caption features (M, Ft), the caption
    range [offsets[i], offsets[i+1]) of image i, and the source indices kept (bad images dropped)."""

    def __init__(self, image: np.ndarray, text: np.ndarray, offsets: np.ndarray, indices: np.ndarray,
                 skipped: SkipCounter):
        self.image, self.text, self.offsets, self.indices, self.skipped = image, text, offsets, indices, skipped
        self._tensors = {}

    def tensors(self, dtype: torch.dtype = torch.float32) -> tuple:
        """(image, text) features as torch tensors of `dtype`, converted once per dtype (bf16 halves what a
        batch gathers when the heads' matmuls run in bf16)."""
        if dtype not in self._tensors:
            image, text = torch.from_numpy(self.image), torch.from_numpy(self.text)
            self._tensors[dtype] = (image.to(dtype), text.to(dtype))
        return self._tensors[dtype]

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def views(self) -> int:
        return int(self.image.shape[0])

    # ------------------------------------------------------------------------------------------------ build
    @classmethod
    def build(cls, model, source, directory, *, views: int = 1, batch_size: int = 128, workers: int = 0,
              device=None, progress: Optional[bool] = None) -> "FeatureCache":
        if not 1 <= int(views) <= MAX_VIEWS:
            raise UsageError(f"data.feature_cache_views must be in [1, {MAX_VIEWS}], got {views}")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        fp = _fingerprint(model, source, views)
        manifest_path = d / "manifest.json"
        if manifest_path.exists():
            try:
                old = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise ClipforgeError(f"{manifest_path} is unreadable: remove {d} to rebuild the cache") from None
            if old.get("fingerprint") != fp:
                raise UsageError(f"{d} holds a feature cache of another model, source or view count: remove it "
                                 "(or train into a new run directory) to build a new one")
        atomic_write_text(manifest_path, json.dumps({"fingerprint": fp}, indent=2))
        device = device or torch.device("cpu")
        n = len(source)
        n_chunks = -(-n // CHUNK)
        todo = [k for k in range(n_chunks) if not (d / f"chunk_{k:05d}.npz").exists()]
        if todo:
            log.info("feature cache: encoding %d images x %d view(s) and their captions once (%d of %d chunks "
                     "to do) -> %s", n, views, len(todo), n_chunks, d)
        was_training = model.training
        model.eval()
        bar = Progress(len(todo) * min(CHUNK, n) * views, desc="feature cache", unit="img", progress=progress)
        try:
            for k in todo:
                _build_chunk(model, source, d, k, views, batch_size, workers, device, bar)
        finally:
            bar.close()
            model.train(was_training)
        return cls.load(d, n_chunks)

    @classmethod
    def load(cls, d: Path, n_chunks: int) -> "FeatureCache":
        imgs, txts, counts, idx = [], [], [], []
        skipped = SkipCounter()
        for k in range(n_chunks):
            try:
                with np.load(d / f"chunk_{k:05d}.npz", allow_pickle=False) as z:
                    imgs.append(z["image"])
                    txts.append(z["text"])
                    counts.append(z["caption_counts"])
                    idx.append(z["indices"])
                    sk = json.loads(str(z["skipped"]))
                    part = SkipCounter(sk["counts"])
                    part.samples = [tuple(x) for x in sk["samples"]]
                    skipped.merge(part)
            except (OSError, KeyError, ValueError) as e:
                raise ClipforgeError(f"{d}/chunk_{k:05d}.npz is unreadable ({e}): remove it to re-encode that "
                                     "chunk") from None
        counts_all = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts_all)]).astype(np.int64)
        image = np.concatenate(imgs, axis=1) if imgs else np.zeros((1, 0, 0), np.float32)
        return cls(image, np.concatenate(txts) if txts else np.zeros((0, 0), np.float32), offsets,
                   np.concatenate(idx) if idx else np.zeros(0, np.int64), skipped)

    # ---------------------------------------------------------------------------------------------- batches
    def loader(self, batch_size: int, *, seed: int, epoch: int, start: int = 0, rank: int = 0,
               world_size: int = 1, dtype: torch.dtype = torch.float32) -> "FeatureLoader":
        return FeatureLoader(self, batch_size, seed, epoch, start, rank, world_size, dtype)


class _Subset:
    """A source restricted to a range of indices (one chunk), for the labelled loader."""

    def __init__(self, source, lo: int, hi: int):
        self.source, self.lo, self.hi = source, lo, hi
        self.random_access = True

    def __len__(self):
        return self.hi - self.lo

    def __getitem__(self, i):
        return self.source[self.lo + i]


def _build_chunk(model, source, d: Path, k: int, views: int, batch_size: int, workers: int, device, bar) -> None:
    lo, hi = k * CHUNK, min((k + 1) * CHUNK, len(source))
    part = _Subset(source, lo, hi)
    per_view, kept, skipped = [], None, SkipCounter()
    with torch.inference_mode():
        for v in range(views):
            transform = model.preprocess if v == 0 else model.preprocess_train
            # the pair loader (a pair needs no label); its sampled caption is unused: every caption is encoded below
            loader = make_pair_loader(part, transform, model.tokenizer, batch_size, seed=0x7A11, epoch=v,
                                      workers=workers, shuffle=False, drop_last=False, on_bad="drop")
            feats, idx = [], []
            for batch in loader:
                if batch["pixels"].shape[0]:
                    feats.append(tower_features(model.visual, batch["pixels"].to(device)).float().cpu())
                    idx.append(np.asarray(batch["indices"], dtype=np.int64))
                bar.update(int(batch.get("num_slots", batch["pixels"].shape[0])))
            f = torch.cat(feats).numpy() if feats else np.zeros((0, model.visual.feature_dim
                                                                 if is_pretrained_tower(model.visual) else
                                                                 model.config.embed_dim), np.float32)
            ix = np.concatenate(idx) if idx else np.zeros(0, np.int64)
            if v == 0:
                kept, skipped = ix, loader.skipped
            elif not np.array_equal(ix, kept):  # an image that decodes once decodes every time: keep the common set
                common = np.intersect1d(kept, ix)
                keep_rows = np.isin(kept, common)
                per_view = [p[keep_rows] for p in per_view]
                kept, f = common, f[np.isin(ix, common)]
            per_view.append(f)
        captions, counts = [], []
        for i in kept.tolist():
            caps = [c for c in source[lo + i].captions if isinstance(c, str) and c.strip()] or [""]
            captions.extend(caps)
            counts.append(len(caps))
        text = []
        for s in range(0, len(captions), 256):
            ids = model.tokenizer(captions[s:s + 256], truncate="silent").to(device)
            text.append(tower_features(model.text, ids).float().cpu())
    text_np = torch.cat(text).numpy() if text else np.zeros((0, 1), np.float32)
    image = np.stack(per_view) if per_view else np.zeros((views, 0, 1), np.float32)
    tmp = d / f".chunk_{k:05d}.{os.getpid()}.npz"
    with open(tmp, "wb") as fh:  # np.savez on a file object: it would append .npz to a path
        np.savez(fh, image=image.astype(np.float32), text=text_np.astype(np.float32),
                 caption_counts=np.asarray(counts, np.int64), indices=(kept + lo).astype(np.int64),
                 skipped=np.asarray(json.dumps({"counts": dict(skipped), "samples": skipped.samples})))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, d / f"chunk_{k:05d}.npz")


class FeatureLoader:
    """One epoch of cached-feature batches for one rank: {"image_features" (B, Fi), "text_features" (B, Ft),
    "indices" (B,) source indices, "skipped", "num_slots"}; `position_after(k)` as the pixel loader's."""

    def __init__(self, cache: FeatureCache, batch_size: int, seed: int, epoch: int, start: int, rank: int,
                 world_size: int, dtype: torch.dtype = torch.float32):
        n = len(cache)
        step = batch_size * world_size
        self.end = n - n % step
        if start < 0 or start > self.end:
            raise UsageError(f"start must be in [0, {self.end}] for this epoch, got {start}")
        self.cache, self.batch_size, self.seed, self.epoch = cache, batch_size, seed, epoch
        self.start, self.rank, self.world_size = start, rank, world_size
        self.order = epoch_order(n, seed, epoch, True)
        rng = np.random.default_rng([int(seed), int(epoch), 0xFEA7])
        counts = np.diff(cache.offsets)
        self.view = rng.integers(0, cache.views, size=n)                       # per image, this epoch
        self.caption = cache.offsets[:-1] + (rng.random(n) * counts).astype(np.int64)
        self.skipped = SkipCounter()
        image, self._text = cache.tensors(dtype)
        self._image = image.reshape(-1, image.shape[-1])                       # (V * N, Fi): row v * N + i
        self._row, self._caption = torch.from_numpy(self.view * n + np.arange(n)), torch.from_numpy(self.caption)
        self._indices = torch.from_numpy(cache.indices)

    def position_after(self, num_batches: int) -> int:
        return min(self.start + num_batches * self.batch_size * self.world_size, self.end)

    def __iter__(self):
        step = self.batch_size * self.world_size
        for b0 in range(self.start, self.end, step):
            rows = torch.from_numpy(self.order[b0 + self.rank:b0 + step:self.world_size])
            # index_select copies whole rows: 5x faster than a two-tensor advanced index at batch 256
            yield {"image_features": self._image.index_select(0, self._row[rows]),
                   "text_features": self._text.index_select(0, self._caption[rows]),
                   "indices": self._indices[rows], "num_slots": int(rows.numel())}


def cache_refusal(cfg, model, loss_fn) -> Optional[str]:
    """Why this run cannot train from a feature cache (None: it can)."""
    if cfg.adapt.method is not None:
        return "adapt.method trains adapters inside the towers"
    for name, tower in (("image", model.visual), ("text", model.text)):
        if not tower_is_frozen(tower):
            return (f"the {name} tower trains (lock it: model.lock_{name}: true, with "
                    f"model.lock_{name}_unlocked_groups: 0)")
    extra = sorted(set(loss_needs(loss_fn)) - {"logit_bias"})
    if extra:
        return f"loss {cfg.loss.name!r} needs {', '.join(extra)}"
    if cfg.run.gradcache_sub_batch:
        return "run.gradcache_sub_batch is set"
    if cfg.data.reinforcement:
        return "data.reinforcement replays stored views"
    return None

