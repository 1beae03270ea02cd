"""The `Source` interface every reader implements.

A Source is an iterable of `Sample`. Readers that know their records up front (folders, manifests, indexed
local tar shards) are also *map-style*: `len(src)` and `src[i]` work, which the training loader needs for
deterministic shuffling and exact resume. Streaming readers (remote shards) only iterate.

`skipped` is a `SkipCounter` filled while reading: problems found when the source was opened (a malformed
manifest row) are kept, and each pass of `iter_decoded` adds the images it could not decode.

`notes` counts, the same way, samples that were kept but changed on the way: `caption_truncated` (a caption
over `max_caption_bytes` was cut, see `clipforge.data.captions.cap_captions`). What opening found stays in
`open_notes`; what a reader notes in a worker process stays in that process.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

from PIL import Image

from clipforge.data.captions import DEFAULT_MAX_CAPTION_BYTES, cap_captions, check_byte_cap
from clipforge.data.decode import BadSample, DecodeOptions, SkipCounter
from clipforge.data.sample import Sample
from clipforge.errors import UsageError
from clipforge.progress import Progress


class StreamingOnly(UsageError, TypeError):
    """`len()` or `[i]` of a source that can only be read in order (compressed or remote shards).

    A `UsageError`, so a caller that needs random access (the training loader, anything that shuffles) stops
    with one line saying what to do; also a `TypeError`, which is what `len()` raises for objects without a
    length, so callers that fall back to one streaming pass when `len()` fails keep doing so.
    """


class Source:
    """Base class: subclasses implement `__len__`/`_get` (map-style) or override `__iter__` (streaming)."""

    kind = "source"
    random_access = True

    def __init__(self, spec: str, *, decode: DecodeOptions | None = None, max_pixels: int | None = -1,
                 max_caption_bytes: int | None = DEFAULT_MAX_CAPTION_BYTES):
        self.spec = spec
        self.max_caption_bytes = check_byte_cap(max_caption_bytes, "max_caption_bytes")
        opts = decode or DecodeOptions()
        if max_pixels != -1:  # -1 means "not given"; None disables the bomb check
            opts = dataclasses.replace(opts, max_pixels=max_pixels)  # every other option kept
        self.decode_options = opts
        self.classnames: list[str] | None = None
        self.open_skipped = SkipCounter()  # found while indexing (bad rows, unreadable members)
        self.skipped = SkipCounter()
        self.open_notes = SkipCounter()  # samples kept but changed, found when opening
        self.notes = SkipCounter()

    def _cap_captions(self, sample_id: str, captions, notes: SkipCounter | None = None) -> list[str]:
        """`captions` cut to `max_caption_bytes`; a sample with a cut caption is noted once."""
        captions, n_cut = cap_captions(captions, self.max_caption_bytes)
        if n_cut:
            (self.notes if notes is None else notes).add(sample_id, "caption_truncated")
        return captions

    # --- map-style access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        raise TypeError(f"{type(self).__name__} does not know its length")

    def _get(self, index: int) -> Sample:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return self._get(index)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self._get(i)

    def locate(self, positions) -> list[tuple[str | None, list[int], list[int]]]:
        """Where `positions` live, so a worker can open only the part of a big collection it reads:
        [(spec of a smaller source holding some of them, or None for this whole source, those positions,
        their positions in that source)]. Reading position p here and its local position there gives the same
        sample. The default is this whole source; sharded readers split by shard."""
        positions = [int(p) for p in positions]
        return [(None, positions, positions)]

    # --- decoding with counting -------------------------------------------------------------------------
    def iter_decoded(self, progress: bool | None = False, desc: str = "reading") -> Iterator[tuple[Sample, Image.Image]]:
        """Yield (sample, RGB image) for every readable sample; count the others in `self.skipped`.

        Each call starts a fresh count (plus what was found when opening), so `skipped` describes one pass.
        `progress=None` shows a bar on a terminal, log lines otherwise (`clipforge.progress`).
        """
        self.skipped = self.open_skipped.copy()
        self.notes = self.open_notes.copy()
        total = self._len_or_none()
        bar = Progress(total, desc=desc, unit="img", progress=progress)
        try:
            for sample in self:
                bar.update(1)
                try:
                    img = sample.load_image()
                except BadSample as e:
                    self.skipped.add(sample.id, e.reason)
                    continue
                yield sample, img
        finally:
            bar.close()

    def _len_or_none(self) -> int | None:
        try:
            return len(self)
        except TypeError:
            return None

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "num_samples": self._len_or_none(),
                "classnames": self.classnames}

    def __repr__(self) -> str:
        n = self._len_or_none()
        return f"{type(self).__name__}({self.spec!r}, n={n if n is not None else '?'})"
