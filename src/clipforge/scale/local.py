"""The local executor: `clipforge.encode` in this process (decoding workers as the job asks)."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Optional, Sequence

from clipforge.encode import Encoder, ImageBatch
from clipforge.scale.executor import EXECUTORS, Executor
from clipforge.scale.job import EncodeJob, encode_batches

__all__ = ["LocalExecutor"]


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """this process (the reference every other executor is compared with)

    A Python caller that already holds the opened source or the loaded encoder passes them (`source`,
    `encoder`) instead of having them opened again; `worker_init_fn` runs in each decoding worker.
    """

    options = ()

    def __init__(self, job: EncodeJob, *, source=None, encoder: Optional[Encoder] = None, worker_init_fn=None):
        self.encoder = encoder if encoder is not None else job.load_encoder()
        self.job = replace(job, precision=self.encoder.precision)
        self.embed_dim = self.encoder.embed_dim
        self.source = source if source is not None else job.open_source()
        self.worker_init_fn = worker_init_fn

    def iter_batches(self, plan: Sequence[Sequence[int]], units: Optional[Sequence[int]] = None, *,
                     source=None, progress: Optional[bool] = False) -> Iterator[ImageBatch]:
        return encode_batches(self.job, self.source, self.encoder, plan, progress=progress,
                              worker_init_fn=self.worker_init_fn)
