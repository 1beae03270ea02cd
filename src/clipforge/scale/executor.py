"""The executor seam: where an `EncodeJob`'s planned batches are encoded.

    ex = create_executor("ray", job, address="auto", num_gpus_per_worker=1)   # or "local"
    for batch in ex.iter_batches(plan, units, source=src):   # every planned batch, encoded, in plan order
        ...                                       # ImageBatch: ids, feats, text_feats, skipped, ...
    ex.close()

`plan` is a list of batches of source positions; `units[b]` is the unit of work batch b belongs to (a
non-decreasing run of integers: a unit is the part one worker takes at a time, e.g. the batches of one
committed shard). Every job that encodes a collection (index builds and updates, embedding jobs, curation)
goes through an executor, "local" included, so the job's engine, precision and threads mean the same wherever
it runs. Executors are a registry whose entries declare their options, so another cluster executor is one new
module.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Iterator, Optional, Sequence

from clipforge.encode import Encoder, ImageBatch
from clipforge.errors import UsageError
from clipforge.registry import Option, Registry
from clipforge.scale.job import EncodeJob

__all__ = ["EXECUTORS", "Executor", "create_executor", "list_executors", "plan_units"]

EXECUTORS = Registry("executor", param="executor")


class Executor(ABC):
    """Runs an `EncodeJob`. After construction `job.precision` is concrete and `embed_dim` is known."""

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    job: EncodeJob
    embed_dim: int

    @property
    def precision(self) -> str:
        return self.job.precision

    @abstractmethod
    def iter_batches(self, plan: Sequence[Sequence[int]], units: Optional[Sequence[int]] = None, *,
                     source=None, progress: Optional[bool] = False,
                     worker_init_fn: Optional[Callable[[int], None]] = None) -> Iterator[ImageBatch]:
        """Yield every planned batch, encoded (`feats`, and `text_feats` when the job asks for captions), in
        plan order, including batches whose images were all unreadable (they carry their skips).

        `source`: the job's source as the caller opened it, if it has: the local executor reads it (instead of
        opening the job's spec again), a distributed one tells each worker which part of the collection a unit
        lives in (`Source.locate`). `worker_init_fn(worker_id)` runs in each decoding process forked from
        this one (the local executor's); executors whose workers are not forked from this process ignore
        it."""

    def describe(self) -> dict:
        return {"executor": self.name, "precision": self.precision}

    def close(self) -> None:
        """Release what the executor started (a local Ray cluster, loaded models)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def plan_units(plan: Sequence[Sequence[int]], units: Optional[Sequence[int]],
               batches_per_unit: int = 8) -> list[list[int]]:
    """Batch indices grouped by unit: `units` as given (checked), else runs of `batches_per_unit` batches."""
    n = len(plan)
    if units is None:
        return [list(range(i, min(i + batches_per_unit, n))) for i in range(0, n, batches_per_unit)]
    units = list(units)
    if len(units) != n:
        raise UsageError(f"`units` has {len(units)} entries for {n} planned batches")
    if any(b < a for a, b in zip(units, units[1:])):
        raise UsageError("`units` must be non-decreasing: a unit is a run of consecutive batches")
    groups: list[list[int]] = []
    for b, u in enumerate(units):
        if b == 0 or u != units[b - 1]:
            groups.append([])
        groups[-1].append(b)
    return groups


def create_executor(name: str, job: EncodeJob, *, encoder: Optional[Encoder] = None, **options) -> Executor:
    """An executor of kind `name` ("local", "ray") for `job`, its options checked against its declaration.

    `encoder`: a model already loaded in this process, used as it is instead of loading `job.model` (the local
    executor only: the others load the model in their workers)."""
    if encoder is None:
        return EXECUTORS.create(name, job, **options)
    if name != "local":
        raise UsageError(f"executor {name!r} loads the model in its workers: pass a model reference (a name or a "
                         "path), not a loaded model")
    return EXECUTORS.get(name)(job, encoder=encoder, **EXECUTORS.check(name, options))


def list_executors() -> list[str]:
    return EXECUTORS.names()
