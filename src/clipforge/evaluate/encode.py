"""Image features for ANY source (labelled or not, with or without captions), streamed batch by batch.

`labelled_image_features` (features.py) needs a label on every sample; classification of unlabelled images
and image<->text retrieval do not, so they read through `iter_image_batches` here. Bad images are skipped and
counted by reason in the returned `SkipCounter`, never raised.

Map-style sources are read by a `torch.utils.data.DataLoader` whose items are whole batches (decode +
preprocess run in `workers` processes, order kept); streaming sources (remote shards) are read in order in
this process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional

import torch
from tqdm.auto import tqdm

from clipforge.data.decode import BadSample, SkipCounter

__all__ = ["ImageBatch", "iter_image_batches", "iter_image_features", "SourceFeatures", "source_features"]


@dataclass
class ImageBatch:
    pixels: torch.Tensor  # (B, 3, H, W) preprocessed, B may be 0
    ids: List[str]
    captions: List[List[str]]
    labels: List[Optional[int]]


class _Batches(torch.utils.data.Dataset):
    """Item b = the b-th batch of the source, decoded and preprocessed, plus its skips."""

    def __init__(self, source, transform: Callable, batch_size: int):
        self.source, self.transform, self.batch_size = source, transform, batch_size

    def __len__(self) -> int:
        return (len(self.source) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int):
        skipped = SkipCounter()
        rows = []
        for i in range(b * self.batch_size, min((b + 1) * self.batch_size, len(self.source))):
            try:
                s = self.source[i]
            except BadSample as e:
                skipped.add(f"index {i}", e.reason)
                continue
            row = _load(s, self.transform, skipped)
            if row is not None:
                rows.append(row)
        return _collate(rows), skipped


def _load(sample, transform, skipped: SkipCounter):
    try:
        px = transform(sample.load_image())
    except BadSample as e:
        skipped.add(sample.id, e.reason)
        return None
    finally:
        sample.drop_image()  # keep memory flat on big sources
    return px, sample.id, list(sample.captions), sample.label


def _collate(rows) -> ImageBatch:
    if not rows:
        return ImageBatch(torch.empty(0), [], [], [])
    return ImageBatch(torch.stack([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows],
                      [r[3] for r in rows])


def _first(x):
    return x


def iter_image_batches(source, transform: Callable, batch_size: int = 256, workers: int = 0,
                       skipped: Optional[SkipCounter] = None, progress: Optional[bool] = None,
                       desc: str = "images") -> Iterator[ImageBatch]:
    """Yield preprocessed batches of every readable image in source order; count the rest in `skipped`."""
    skipped = SkipCounter() if skipped is None else skipped
    skipped.merge(getattr(source, "open_skipped", SkipCounter()))  # bad rows found when the source was opened
    disable = None if progress is None else not progress
    if getattr(source, "random_access", False):
        ds = _Batches(source, transform, batch_size)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                         collate_fn=_first)
        with tqdm(total=len(source), desc=desc, unit="img", disable=disable) as bar:
            for batch, skips in dl:
                skipped.merge(skips)
                bar.update(len(batch.ids) + skips.total)
                if batch.ids:
                    yield batch
        return
    rows = []
    source.skipped = SkipCounter()  # the reader adds broken shards / members met during this pass
    with tqdm(desc=desc, unit="img", disable=disable) as bar:
        for sample in source:  # streaming: decode here, in order
            bar.update(1)
            row = _load(sample, transform, skipped)
            if row is not None:
                rows.append(row)
            if len(rows) == batch_size:
                yield _collate(rows)
                rows = []
        skipped.merge(source.skipped)
    if rows:
        yield _collate(rows)


@torch.inference_mode()
def iter_image_features(model, source, batch_size: int = 256, workers: int = 0,
                        skipped: Optional[SkipCounter] = None, progress: Optional[bool] = None,
                        desc: str = "images") -> Iterator[tuple[ImageBatch, torch.Tensor]]:
    """Yield (batch, L2-normalised float32 features (B, D) on CPU) for every readable image."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for batch in iter_image_batches(source, model.preprocess, batch_size, workers, skipped, progress, desc):
            yield batch, model.encode_image(batch.pixels.to(dev), normalize=True).float().cpu()
    finally:
        model.train(was_training)


@dataclass
class SourceFeatures:
    feats: torch.Tensor  # (N, D) float32, L2-normalised
    ids: List[str]
    captions: List[List[str]]
    labels: List[Optional[int]]
    skipped: SkipCounter = field(default_factory=SkipCounter)


def source_features(model, source, batch_size: int = 256, workers: int = 0, progress: Optional[bool] = None,
                    desc: str = "images") -> SourceFeatures:
    """All readable images of a source encoded at once (ids, captions and labels kept alongside)."""
    skipped = SkipCounter()
    feats, ids, caps, labels = [], [], [], []
    for batch, f in iter_image_features(model, source, batch_size, workers, skipped, progress, desc):
        feats.append(f)
        ids += batch.ids
        caps += batch.captions
        labels += batch.labels
    dim = model.config.embed_dim
    return SourceFeatures(torch.cat(feats) if feats else torch.zeros(0, dim), ids, caps, labels, skipped)
