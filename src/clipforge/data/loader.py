"""Batches for training and evaluation: deterministic order, per-rank shards, exact resume, counted skips.

The order of one epoch is a permutation of the source's indices drawn from (seed, epoch). Positions in that
order are *global*: rank r of W takes positions start + r, start + r + W, ... so ranks never overlap, and a
job that consumed `start` samples (all ranks together; a multiple of W) resumes with exactly the samples an
uninterrupted pass would have given after that point. Everything random per sample — the caption picked
among several, the seed of a random train transform — is derived from (seed, epoch, source index), never
from a process-global RNG, so it does not depend on workers, batch boundaries or restarts.

Besides one caption per image, a pair batch can carry what an objective needs (`PairExtras`, set by the
trainer from the loss's declared needs): a counterfactual copy of each caption that holds a number (counting),
K sub-captions per image drawn from the sentences of all its captions (DreamLIP), each caption's first
sentence (Long-CLIP), and — from a reinforcement store — one stored augmentation per image replayed exactly
with the teacher's embeddings for that view and for the chosen caption (MobileCLIP). Every choice among
several is again drawn from (seed, epoch, source index).

Batches are built inside `torch.utils.data.DataLoader` workers (one batch per dataset item, so the DataLoader
keeps their order). A bad sample is never a crash: its (id, reason) travels in the batch's `skipped` field to
the main process, where `loader.skipped` adds them up. With `on_bad="replace"` (training) the slot is filled
by the next readable sample in the epoch order so batches keep their size — every rank must contribute
equal-sized batches to a distributed contrastive loss; with `on_bad="drop"` (evaluation) it is left out.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from clipforge.data.captions import first_sentence, sub_captions
from clipforge.data.counterfactual import MAX_COUNT, counterfactual_caption
from clipforge.data.decode import BadSample, SkipCounter
from clipforge.data.reinforced import ReinforcementStore
from clipforge.errors import UsageError

MAX_REPLACE_TRIES = 32
ON_BAD = ("replace", "drop")


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """(n,) int64: the source indices in this epoch's order."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n).astype(np.int64)


def sample_seed(seed: int, epoch: int, index: int, stream: int) -> int:
    """A 63-bit seed for one (seed, epoch, source index, purpose) — stable across processes and restarts."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index), stream]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


# sample_seed streams: 1 caption choice, 2 transform, 3 stored augmentation, 4 counterfactual, 5 sub-captions
def pick_caption_index(n: int, seed: int, epoch: int, index: int) -> int:
    return 0 if n == 1 else sample_seed(seed, epoch, index, 1) % n


def pick_caption(captions: list[str], seed: int, epoch: int, index: int) -> str:
    return captions[pick_caption_index(len(captions), seed, epoch, index)]


@dataclass(frozen=True)
class PairExtras:
    """What a pair batch carries beyond pixels and one caption's tokens (see the module docstring).

    counterfactuals: "counterfactual_tokens" (C, T) + "count_index" (C,) for the rows whose caption has a number
        (the counterfactual number drawn from 2..max_count).
    sub_captions: K > 0 -> "sub_caption_tokens" (M, T) + "sub_caption_index" (M,), up to K per row.
    short_captions: "short_tokens" (B, T), each chosen caption's first sentence.
    reinforcement: a store -> the view and caption are the stored ones, plus "teacher_image_embeds" and
        "teacher_text_embeds" (one (B, D_e) tensor per teacher).
    """

    counterfactuals: bool = False
    max_count: int = MAX_COUNT     # counterfactual numbers come from 2..max_count
    sub_captions: int = 0
    short_captions: bool = False
    reinforcement: Optional[ReinforcementStore] = None


class _BatchDataset(torch.utils.data.Dataset):
    """Item b = the b-th batch of this rank, fully built (decoded, transformed, tokenized)."""

    def __init__(self, source, order, positions, batch_size, image_transform, tokenizer, seed, epoch, mode,
                 on_bad, end, extras: Optional[PairExtras] = None):
        self.source, self.order, self.positions = source, order, positions
        self.batch_size, self.transform, self.tokenizer = batch_size, image_transform, tokenizer
        self.seed, self.epoch, self.mode, self.on_bad, self.end = seed, epoch, mode, on_bad, end
        self.extras = extras or PairExtras()
        if self.extras.reinforcement is not None and not hasattr(image_transform, "apply"):
            raise UsageError("a reinforcement store needs a train transform that can replay stored "
                             "augmentations (with `apply(image, params)`)")

    def __len__(self) -> int:
        return (len(self.positions) + self.batch_size - 1) // self.batch_size

    def _rng(self, idx: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(sample_seed(self.seed, self.epoch, idx, stream))

    def _load(self, pos: int):
        """The sample at epoch position `pos`, transformed: (index, sample, pixels, caption or None, extras
        dict) or BadSample."""
        idx = int(self.order[pos])
        sample = self.source[idx]
        if self.mode == "pairs" and not sample.captions:
            raise BadSample("no_caption", sample.id)
        if self.mode == "labelled" and sample.label is None:
            raise BadSample("no_label", sample.id)
        img = sample.load_image()
        store = self.extras.reinforcement if self.mode == "pairs" else None
        extra: dict = {}
        captions = sample.captions
        if store is not None:
            row = store.row_of(sample.id)
            if row is None:
                raise BadSample("not_reinforced", sample.id)
            if store.image_size(row) != tuple(img.size):
                raise BadSample("reinforcement_mismatch", sample.id)
            aug = sample_seed(self.seed, self.epoch, idx, 3) % store.augmentations
            pixels = self.transform.apply(img, store.params(row, aug))   # exactly the view the teacher saw
            captions = store.captions(row)
            c = pick_caption_index(len(captions), self.seed, self.epoch, idx)
            extra["teacher_image"], extra["teacher_text"] = store.image_embeds(row, aug), store.text_embeds(row, c)
            cap = captions[c]
        else:
            # Seed a random transform from the sample itself; restore the caller's RNG state afterwards.
            with torch.random.fork_rng(devices=[]):
                state = random.getstate()
                s = sample_seed(self.seed, self.epoch, idx, 2)
                # The CPU generator only: torch.manual_seed also seeds every accelerator backend, queueing a
                # lazy call with a formatted stack trace each time (~250 us, 30 ms per batch of 128 here).
                torch.default_generator.manual_seed(s)
                random.seed(s)
                try:
                    pixels = self.transform(img)
                finally:
                    random.setstate(state)
            cap = pick_caption(captions, self.seed, self.epoch, idx) if self.mode == "pairs" else None
        if cap is not None:
            if self.extras.counterfactuals:
                extra["counterfactual"] = counterfactual_caption(cap, self._rng(idx, 4), self.extras.max_count)
            if self.extras.sub_captions:
                extra["sub_captions"] = sub_captions(captions, self.extras.sub_captions, self._rng(idx, 5), cap)
            if self.extras.short_captions:
                extra["short"] = first_sentence(cap)
        return idx, sample, pixels, cap, extra

    def __getitem__(self, b: int) -> dict:
        slots = self.positions[b * self.batch_size:(b + 1) * self.batch_size]
        skipped = SkipCounter()
        rows = []
        for pos in slots:
            try:
                rows.append(self._load(int(pos)))
                continue
            except BadSample as e:
                skipped.add(self._id_at(int(pos)), e.reason)
            if self.on_bad == "replace":
                row = self._substitute(int(pos))
                if row is not None:
                    rows.append(row)
        return self._collate(rows, skipped, b)

    def _id_at(self, pos: int) -> str:
        try:
            return self.source[int(self.order[pos])].id
        except Exception:  # noqa: BLE001 - the id is only for the report
            return f"index {int(self.order[pos])}"

    def _substitute(self, pos: int):
        """The next readable sample after `pos` in epoch order (its failures are counted at their own slot)."""
        n = len(self.order)
        for k in range(1, min(MAX_REPLACE_TRIES, n)):
            try:
                return self._load((pos + k) % n)
            except BadSample:
                continue
        return None

    def _collate(self, rows, skipped: SkipCounter, b: int) -> dict:
        batch = {
            "ids": [r[1].id for r in rows],
            "indices": torch.tensor([r[0] for r in rows], dtype=torch.long),
            "skipped": skipped,
            "num_slots": len(self.positions[b * self.batch_size:(b + 1) * self.batch_size]),
        }
        batch["pixels"] = torch.stack([r[2] for r in rows]) if rows else torch.empty(0)  # (B, 3, H, W)
        if self.mode == "pairs":
            batch["captions"] = [r[3] for r in rows]
            batch["tokens"] = self._tokens(batch["captions"])
            batch["labels"] = torch.tensor([-1 if r[1].label is None else r[1].label for r in rows],
                                           dtype=torch.long)
            self._collate_extras(batch, [r[4] for r in rows])
        else:
            batch["labels"] = torch.tensor([r[1].label for r in rows], dtype=torch.long)  # (B,)
        return batch

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts) if texts else torch.empty(0, dtype=torch.long)

    def _collate_extras(self, batch: dict, extras: list[dict]) -> None:
        ex = self.extras
        if ex.counterfactuals:
            rows = [(i, e["counterfactual"]) for i, e in enumerate(extras) if e.get("counterfactual")]
            batch["counterfactual_captions"] = [c for _, c in rows]
            batch["counterfactual_tokens"] = self._tokens(batch["counterfactual_captions"])   # (C, T)
            batch["count_index"] = torch.tensor([i for i, _ in rows], dtype=torch.long)        # (C,)
        if ex.sub_captions:
            rows = [(i, c) for i, e in enumerate(extras) for c in e["sub_captions"]]
            batch["sub_captions"] = [c for _, c in rows]
            batch["sub_caption_tokens"] = self._tokens(batch["sub_captions"])                 # (M, T)
            batch["sub_caption_index"] = torch.tensor([i for i, _ in rows], dtype=torch.long)  # (M,)
        if ex.short_captions:
            batch["short_captions"] = [e["short"] for e in extras]
            batch["short_tokens"] = self._tokens(batch["short_captions"])                     # (B, T)
        if ex.reinforcement is not None and extras:
            for key, name in (("teacher_image", "teacher_image_embeds"), ("teacher_text", "teacher_text_embeds")):
                batch[name] = [torch.from_numpy(np.stack([e[key][t] for e in extras]))          # (B, D_t) each
                               for t in range(ex.reinforcement.num_teachers)]


def _identity(x):
    return x


class BatchLoader:
    """Iterable of batches for one rank and one epoch. `skipped` sums what the batches reported.

    `position_after(k)` is the global resume position after this rank yielded k batches (all ranks step
    together), i.e. what a checkpoint should store as `start` for the same epoch.
    """

    def __init__(self, dataset: _BatchDataset, workers: int, start: int, world_size: int, prefetch: int = 2):
        self.dataset, self.workers, self.start, self.world_size = dataset, workers, start, world_size
        self.prefetch = prefetch
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_samples(self) -> int:
        return len(self.dataset.positions)

    def position_after(self, num_batches: int) -> int:
        return min(self.start + num_batches * self.dataset.batch_size * self.world_size, self.dataset.end)

    def __iter__(self):
        kw = {}
        if self.workers > 0:
            kw = {"prefetch_factor": self.prefetch, "persistent_workers": False}
        dl = torch.utils.data.DataLoader(self.dataset, batch_size=None, shuffle=False, num_workers=self.workers,
                                         collate_fn=_identity, **kw)
        with torch.random.fork_rng(devices=[]):  # the iterator draws its base seed from the global RNG: keep that
            batches = iter(dl)                    # draw out of the caller's stream (dropout), so a resumed run's
        for batch in batches:                     # new iterator leaves the stream where the first run had it
            self.skipped.merge(batch["skipped"])
            yield batch


def _plan(source, batch_size, seed, epoch, start, rank, world_size, shuffle, drop_last):
    if not getattr(source, "random_access", False):
        raise UsageError(f"{source!r} cannot be read by index (streaming-only shards); the training loader "
                         "needs local .tar shards or a folder/manifest source")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    n = len(source)
    order = epoch_order(n, seed, epoch, shuffle)
    step = batch_size * world_size
    # The end is fixed by the whole epoch, not by `start`, so a resumed pass stops where a full one would.
    end = n - n % step if drop_last else n
    if start < 0 or start > end:
        raise UsageError(f"start must be in [0, {end}] for this epoch, got {start}")
    positions = np.arange(start + rank, end, world_size, dtype=np.int64)
    return order, positions, end


def make_pair_loader(source, image_transform: Callable, tokenizer: Callable, batch_size: int, *, seed: int = 0,
                     epoch: int = 0, start: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                     shuffle: bool = True, drop_last: bool = True, on_bad: str = "replace",
                     extras: Optional[PairExtras] = None) -> BatchLoader:
    """Image-text batches: {"pixels" (B,3,H,W), "tokens" (B,T), "captions", "ids", "indices", "labels" (B,)
    (-1 where unknown), "skipped" (SkipCounter of this batch), "num_slots"}, plus what `extras` asks for."""
    if on_bad not in ON_BAD:
        raise UsageError(f"on_bad must be one of {list(ON_BAD)}, got {on_bad!r}")
    order, positions, end = _plan(source, batch_size, seed, epoch, start, rank, world_size, shuffle, drop_last)
    ds = _BatchDataset(source, order, positions, batch_size, image_transform, tokenizer, seed, epoch, "pairs",
                       on_bad, end, extras)
    return BatchLoader(ds, workers, start, world_size)


def make_labelled_loader(source, image_transform: Callable, batch_size: int, *, seed: int = 0, epoch: int = 0,
                         start: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                         shuffle: bool = False, drop_last: bool = False, on_bad: str = "drop") -> BatchLoader:
    """Classification batches: {"pixels" (B,3,H,W), "labels" (B,), "ids", "indices", "skipped", "num_slots"}."""
    if on_bad not in ON_BAD:
        raise UsageError(f"on_bad must be one of {list(ON_BAD)}, got {on_bad!r}")
    order, positions, end = _plan(source, batch_size, seed, epoch, start, rank, world_size, shuffle, drop_last)
    ds = _BatchDataset(source, order, positions, batch_size, image_transform, None, seed, epoch, "labelled",
                       on_bad, end)
    return BatchLoader(ds, workers, start, world_size)
