"""`EncodeJob`: everything a worker needs to encode part of a collection exactly as a local run would.

It holds names, not objects (a source spec, a model reference), so it pickles to any worker, which opens the
source and loads the model itself, run by the job's `engine` in its `precision` with its `threads` (and its
`token_merge` / `merge_method`: token merging in a ViT image tower, `clipforge.models.token_merge`). Registered
model names without weights are initialised from `seed`, so every worker gets the same weights (see
`Encoder.load`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from clipforge.data.sources import open_source
from clipforge.encode import Encoder, ImageBatch
from clipforge.encode.batches import REQUIRE
from clipforge.errors import UsageError

__all__ = ["EncodeJob", "encode_batches", "UnitView"]


@dataclass(frozen=True)
class EncodeJob:
    """What to encode and how. `precision` may be "auto" until an executor resolves it where it runs; `engine`
    is the inference runtime every worker runs the model with (torch | onnx | openvino | auto, see
    `clipforge.encode`), with `threads` intra-op threads (None: the engine's default; a Ray actor's CPUs).
    `token_merge` / `merge_method`: token merging in the model's ViT image tower (torch engine; anything
    `models.token_merge.token_merge_setting` reads, e.g. 4, "8,8,4" or a recorded dict; None: exact)."""

    source: str
    model: str
    source_options: dict = field(default_factory=dict)
    precision: str = "auto"
    engine: str = "torch"
    threads: Optional[int] = None
    token_merge: Any = None
    merge_method: Optional[str] = None
    device: Optional[str] = None  # None: CUDA where the worker has it, else the CPU
    captions: bool = False  # also embed each row's first caption (ImageBatch.text_feats)
    require: Optional[str] = None  # "label" / "caption": skip (and count) samples without one
    workers: int = 0  # decoding processes per encoder
    normalize: bool = True
    seed: int = 0
    # per-batch work done where the batch was encoded: after(encoder, batch) -> what the executor yields for
    # that batch instead of the batch (e.g. a job's scores, so only they travel back). It must pickle (a
    # module-level function, or functools.partial of one) and depend only on its arguments.
    after: Optional[Callable[[Encoder, ImageBatch], Any]] = None
    # facts about each decoded image, computed where it is decoded: inspect(sample, image) -> dict, merged into
    # the row's `batch.info` (see `clipforge.encode.batches`). It must pickle like `after`.
    inspect: Optional[Callable[[Any, Any], dict]] = None

    def __post_init__(self):
        if self.require not in REQUIRE:
            raise UsageError(f"`require` must be one of {REQUIRE}, got {self.require!r}")
        if self.workers < 0:
            raise UsageError(f"`workers` must be >= 0, got {self.workers}")
        if self.after is not None and not callable(self.after):
            raise UsageError(f"`after` must be a function (encoder, batch) -> result, got {type(self.after).__name__}")
        if self.inspect is not None and not callable(self.inspect):
            raise UsageError(f"`inspect` must be a function (sample, image) -> dict, got "
                             f"{type(self.inspect).__name__}")

    def open_source(self):
        return open_source(self.source, **self.source_options)

    def load_encoder(self) -> Encoder:
        return Encoder.load(self.model, engine=self.engine, device=self.device, precision=self.precision,
                            threads=self.threads, seed=self.seed, token_merge=self.token_merge,
                            merge_method=self.merge_method)


def encode_batches(job: EncodeJob, source, encoder: Encoder, plan: Sequence[Sequence[int]], *,
                   progress: Optional[bool] = False, worker_init_fn=None) -> Iterator[Any]:
    """The planned batches of `source`, encoded (each image's `job.inspect` facts in `batch.info`; then passed
    through `job.after`, if set): the one call every executor makes, here or in a worker."""
    batches = encoder.iter_source(source, batches=plan, workers=job.workers, require=job.require,
                                  normalize=job.normalize, captions=job.captions, progress=progress,
                                  worker_init_fn=worker_init_fn, inspect=job.inspect)
    if job.after is None:
        return batches
    return (job.after(encoder, batch) for batch in batches)


class UnitView:
    """One unit's positions read from the smaller sources that hold them (`Source.locate`): `view[p]` is the
    sample at position p of the whole collection, so batches keep their global positions and ids."""

    random_access = True

    def __init__(self, where: dict[int, tuple[object, int]]):
        self.where = where  # global position -> (source, position in it)

    def __getitem__(self, pos: int):
        src, local = self.where[int(pos)]
        return src[local]
