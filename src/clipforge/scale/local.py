"""The local executor: `clipforge.encode` in this process (decoding workers as the job asks)."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator, Optional, Sequence

from clipforge.encode import Encoder, ImageBatch
from clipforge.scale.executor import EXECUTORS, Executor
from clipforge.scale.job import EncodeJob, encode_batches

__all__ = ["LocalExecutor"]


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """this process (the reference every other executor is compared with)

    The model is loaded here as the job says (engine, precision, threads), unless the caller passes one it
    already holds (`encoder`, used as it is); the source is the one `iter_batches` is given, else the job's
    spec opened on first use.
    """

    options = ()

    def __init__(self, job: EncodeJob, *, encoder: Optional[Encoder] = None):
        self.encoder = encoder if encoder is not None else job.load_encoder()
        self.job = replace(job, precision=self.encoder.precision)
        self.embed_dim = self.encoder.embed_dim
        self._source = None

    @property
    def source(self):
        """The job's source, opened here (once)."""
        if self._source is None:
            self._source = self.job.open_source()
        return self._source

    def iter_batches(self, plan: Sequence[Sequence[int]], units: Optional[Sequence[int]] = None, *,
                     source=None, progress: Optional[bool] = False,
                     worker_init_fn: Optional[Callable[[int], None]] = None) -> Iterator[ImageBatch]:
        return encode_batches(self.job, self.source if source is None else source, self.encoder, plan,
                              progress=progress, worker_init_fn=worker_init_fn)

    def describe(self) -> dict:
        return {"executor": self.name}  # the precision is the job's record (index.json, the scores file)
