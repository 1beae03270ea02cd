"""Preprocessed image batches from any data-layer source, with every skip counted by reason.

Map-style sources (folders, manifests, local shards) are read by a `torch.utils.data.DataLoader` whose items
are whole batches: `workers` processes decode and preprocess batch b+1, b+2 while the model runs batch b,
and the DataLoader keeps their order. Streaming sources (remote shards) are read in order in this process.

The batches follow a plan: by default consecutive runs of `batch_size` source positions; a caller may pass
its own (`batches=[[0, 1, 2], [3, 4], ...]`, e.g. so that no batch straddles a shard it commits), and a
streaming source then yields exactly those positions in the same groups. Every planned batch is yielded,
even one whose images were all unreadable (it has no rows but carries its skips), so callers can count and
commit batch by batch.

Each row also carries `info`: the decoded image's `width` and `height` (before preprocessing), plus whatever a
caller's `inspect(sample, image) -> dict` returns, computed where the image is decoded (in the workers), so
facts about the original image (content hashes, a pixel descriptor) cost no second decode.

A transform may return several views of an image, (V, 3, H, W), and/or a `(pixels, extra)` pair: the batch's
pixels are then (B, V, 3, H, W) (and its features (B, V, D), see `Encoder.iter_source`), and `extra` (a dict,
e.g. the augmentation parameters the views were made with) is merged into the row's `info`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch

from clipforge.data.decode import BadSample, SkipCounter
from clipforge.errors import UsageError
from clipforge.progress import Progress

__all__ = ["ImageBatch", "REQUIRE", "plan_batches", "iter_image_batches"]

log = logging.getLogger(__name__)
REQUIRE = (None, "label", "caption")  # skip samples without one ("no_label" / "no_caption")


@dataclass
class ImageBatch:
    """Rows of one batch, in source order. `pixels` is (B, 3, H, W) until encoded; `feats` (B, D) after;
    `text_feats` (B, D) when the encoder was asked for caption embeddings too."""

    ids: list[str]
    captions: list[list[str]]
    labels: list[Optional[int]]
    meta: list[dict]
    positions: list[int]  # source positions of the rows (stream order for streaming sources)
    info: list[dict] = field(default_factory=list)  # per row: width, height of the decoded image + inspect(...)
    skipped: SkipCounter = field(default_factory=SkipCounter)  # what this batch could not use
    pixels: Optional[torch.Tensor] = None
    feats: Optional[torch.Tensor] = None
    text_feats: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.ids)


def plan_batches(positions: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive runs of `batch_size` positions."""
    positions = list(positions)
    return [positions[i:i + batch_size] for i in range(0, len(positions), batch_size)]


def _row(sample, transform: Callable, require: Optional[str], inspect: Optional[Callable] = None):
    """(pixels, info) or raise BadSample. A transform (or inspect) failing on one odd image is that image's
    fault."""
    try:
        if require == "label" and sample.label is None:
            raise BadSample("no_label", sample.id)
        if require == "caption" and not sample.captions:
            raise BadSample("no_caption", sample.id)
        try:
            image = sample.load_image()
            info = {"width": image.width, "height": image.height}
            if inspect is not None:
                info.update(inspect(sample, image))
            return transform(image), info
        except BadSample:
            raise
        except Exception as e:  # noqa: BLE001 - one bad image must not end a long job
            log.debug("%s: %s", sample.id, e)
            raise BadSample("decode_error", f"{type(e).__name__}: {e}") from None
    finally:
        sample.drop_image()  # keep memory flat on big sources


def _build(pairs, transform: Callable, require: Optional[str], skipped: SkipCounter,
           inspect: Optional[Callable] = None) -> ImageBatch:
    """pairs: (position, sample or BadSample raised when reading it) -> one ImageBatch."""
    pixels, batch = [], ImageBatch([], [], [], [], [], skipped=skipped)
    for pos, sample in pairs:
        if isinstance(sample, BadSample):
            skipped.add(f"index {pos}", sample.reason)
            continue
        try:
            px, info = _row(sample, transform, require, inspect)
        except BadSample as e:
            skipped.add(sample.id, e.reason)
            continue
        if isinstance(px, tuple):  # a transform that returns (pixels, extra facts about them)
            px, extra = px
            info.update(extra)
        pixels.append(px)
        batch.ids.append(sample.id)
        batch.captions.append(list(sample.captions))
        batch.labels.append(sample.label)
        batch.meta.append(dict(sample.meta))
        batch.positions.append(pos)
        batch.info.append(info)
    batch.pixels = torch.stack(pixels) if pixels else torch.empty(0)
    return batch


def _read(source, pos: int):
    try:
        return source[pos]
    except BadSample as e:
        return e


class _PlannedBatches(torch.utils.data.Dataset):
    """Item b = planned batch b, read, decoded and preprocessed (in a DataLoader worker)."""

    def __init__(self, source, plan: list[list[int]], transform: Callable, require: Optional[str],
                 inspect: Optional[Callable] = None):
        self.source, self.plan, self.transform, self.require = source, plan, transform, require
        self.inspect = inspect

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> ImageBatch:
        pairs = [(pos, _read(self.source, pos)) for pos in self.plan[b]]
        return _build(pairs, self.transform, self.require, SkipCounter(max_samples=len(pairs) + 1), self.inspect)


def _first(x):
    return x


def _stream(source, plan: Optional[list[list[int]]], batch_size: int, transform, require,
            inspect=None) -> Iterator[ImageBatch]:
    """A streaming source, read once in order: the planned groups of positions, or runs of batch_size."""
    source.skipped = SkipCounter()  # the reader adds broken shards / members met during this pass
    if plan is None:
        chunk = []
        for pos, sample in enumerate(source):
            chunk.append((pos, sample))
            if len(chunk) == batch_size:
                yield _build(chunk, transform, require, SkipCounter(max_samples=batch_size + 1), inspect)
                chunk = []
        if chunk:
            yield _build(chunk, transform, require, SkipCounter(max_samples=len(chunk) + 1), inspect)
        return
    where = {pos: b for b, group in enumerate(plan) for pos in group}
    pending: dict[int, list] = {}
    nxt = 0
    for pos, sample in enumerate(source):
        b = where.get(pos)
        if b is None:
            continue
        pending.setdefault(b, []).append((pos, sample))
        while nxt < len(plan) and len(pending.get(nxt, ())) == len(plan[nxt]):
            yield _build(pending.pop(nxt, []), transform, require, SkipCounter(max_samples=len(plan[nxt]) + 1),
                         inspect)
            nxt += 1
    for b in range(nxt, len(plan)):  # the stream ended early: what arrived of the remaining groups
        yield _build(pending.pop(b, []), transform, require, SkipCounter(max_samples=len(plan[b]) + 1), inspect)


def iter_image_batches(source, transform: Callable, batch_size: int = 256, *, batches=None, workers: int = 0,
                       require: Optional[str] = None, skipped: Optional[SkipCounter] = None,
                       progress: Optional[bool] = None, desc: str = "images",
                       worker_init_fn: Optional[Callable[[int], None]] = None,
                       inspect: Optional[Callable] = None) -> Iterator[ImageBatch]:
    """Yield every planned batch of `source`, decoded and preprocessed by `transform`, in plan order.

    `skipped` (when given) accumulates every batch's skips; a whole pass (no `batches`) also counts what the
    source found wrong when it was opened (e.g. a malformed manifest row) and, for a streaming source, the
    broken shards met while reading. `require`: "label" / "caption" skips samples without one.
    `progress`: True / False forces the bar; None shows it on a terminal, and log lines otherwise
    (`clipforge.progress`). `inspect(sample, image) -> dict`
    adds facts about each decoded image to its row's `info` (it runs in the decoding workers, so it must be
    picklable: a module-level function or a `functools.partial` of one).
    """
    if require not in REQUIRE:
        raise UsageError(f"`require` must be one of {REQUIRE}, got {require!r}")
    whole_pass = batches is None
    plan = [list(map(int, b)) for b in batches] if batches is not None else None
    if getattr(source, "random_access", False):
        if plan is None:
            plan = plan_batches(range(len(source)), batch_size)
        total = sum(len(b) for b in plan)
    else:
        total = sum(len(b) for b in plan) if plan is not None else None
    if whole_pass and skipped is not None:
        skipped.merge(getattr(source, "open_skipped", SkipCounter()))  # found when the source was opened
    if getattr(source, "random_access", False):
        kw = {"prefetch_factor": 2, "worker_init_fn": worker_init_fn} if workers > 0 else {}
        it = torch.utils.data.DataLoader(_PlannedBatches(source, plan, transform, require, inspect), batch_size=None,
                                         shuffle=False, num_workers=workers, collate_fn=_first, **kw)
    else:
        it = _stream(source, plan, batch_size, transform, require, inspect)
    with Progress(total, desc=desc, unit="img", progress=progress) as bar:
        for batch in it:
            if skipped is not None:
                skipped.merge(batch.skipped)
            bar.update(len(batch) + batch.skipped.total)
            yield batch
    if whole_pass and skipped is not None and not getattr(source, "random_access", False):
        skipped.merge(getattr(source, "skipped", SkipCounter()))
