"""The Ray executor: the job's units of work on a pool of Ray Data actors.

Each actor loads the model once (the job's engine, precision and threads), then encodes whole units: a unit is a
list of planned batches of source positions, and the actor runs exactly the call the local executor runs
(`encode_batches`) on them, reading through the data layer's own readers (`open_source(spec)`), so ids and skip
reasons are identical. When the caller passes its opened source, each unit also carries where its positions live
(`Source.locate`): for webdataset shards, the single shards holding them, so an actor opens (and indexes) only
the shards it reads, never the whole collection. Units go through `Dataset.map_batches` with a fixed-size actor
pool (`concurrency=num_workers`, each actor reserving `num_cpus_per_worker` CPUs and `num_gpus_per_worker` GPUs);
results come back to the caller in plan order (`preserve_order`), so a caller that commits them in order assigns
the same ids as a local run.

Fault tolerance is Ray Data's: an actor that dies (a killed process, a lost node) is restarted and its
unfinished unit is run again from the start, and only finished units' results reach the caller, so a unit is
never returned twice or lost. A killed *driver* is the caller's business: it resumes from what it committed.

Connecting (`address`): None starts a local cluster in this process bound to 127.0.0.1 (no dashboard) unless
Ray is already initialised here (then that one is used as it is) or RAY_ADDRESS is set; "auto" joins the
cluster `ray start` runs on this machine; "HOST:PORT" or "ray://HOST:10001" (Ray Client) join a remote one.
Every worker needs clipforge installed (same version), the model reference and the source's paths readable.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import replace
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from clipforge.data.sources import open_source
from clipforge.encode import ImageBatch
from clipforge.errors import ClipforgeError, UsageError
from clipforge.registry import Option
from clipforge.scale.executor import EXECUTORS, Executor, plan_units
from clipforge.scale.job import EncodeJob, UnitView, encode_batches

__all__ = ["RayExecutor", "import_ray"]

log = logging.getLogger(__name__)


def import_ray():
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ClipforgeError(f"the ray executor needs Ray Data: pip install 'clipforge[scale]' ({e})") from None
    return ray


def _connect(ray, address: Optional[str]) -> bool:
    """Initialise Ray for this process; True when this call started it (and so should shut it down)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine by default
    if address in (None, "local") and not (address is None and os.environ.get("RAY_ADDRESS")):
        # "local": a new cluster even if another one runs on this machine (never join one by accident)
        _start_local(ray)
        return True
    try:
        ray.init(address=address, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClipforgeError(f"cannot connect to Ray at `address` {address!r}: {e}") from None
    return True


def _start_local(ray, attempts: int = 2) -> None:
    """A new single-node cluster on 127.0.0.1. Ray gives its node 30 s to register, which a busy machine can
    miss (seen on 2 cores at load 25): such a failed start is cleaned up and tried once more."""
    for attempt in range(attempts):
        try:
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                     configure_logging=False)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for a node start-up time-out
            try:
                ray.shutdown()  # the processes the failed start left
            except Exception:  # noqa: BLE001
                pass
            if attempt + 1 == attempts:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ClipforgeError(f"could not start a local Ray cluster ({attempts} tries): {msg}; on a busy "
                                     "machine start a head node first (see docs/scale.md) and pass "
                                     "`address`='auto'") from None


def _ray_data_console(level: int) -> None:
    """Ray Data's console lines (execution plans, where its logs are, progress-bar notes) at `level`: shown only
    when clipforge logs at DEBUG (the CLI's verbose flag); its session log files keep everything."""
    for h in logging.getLogger("ray.data").handlers:
        if "File" not in type(h).__name__:
            h.setLevel(level)


class _UnitWorker:
    """One Ray actor: the source opened and the model loaded once, then one unit per call."""

    job: EncodeJob  # set on the per-run subclass (see `_worker_class`)
    threads: int = 1

    def __init__(self):
        torch.set_num_threads(max(1, self.threads))
        self.encoder = self.job.load_encoder()
        self.sources: dict = {}  # spec (None: the job's whole source) -> opened source, the few last used

    def _open(self, spec: Optional[str]):
        if spec not in self.sources:
            if len(self.sources) >= 8:
                self.sources.pop(next(iter(self.sources)))
            self.sources[spec] = self.job.open_source() if spec is None else \
                open_source(spec, **self.job.source_options)
        return self.sources[spec]

    def _unit_source(self, parts: list):
        """The whole source, or a view over the parts (e.g. single tar shards) that hold this unit."""
        if all(spec is None for spec, _, _ in parts):
            return self._open(None)
        where = {}
        for spec, glob, loc in parts:
            src = self._open(spec)
            where.update((g, (src, lp)) for g, lp in zip(glob, loc))
        return UnitView(where)

    def __call__(self, rows: dict) -> dict:
        units, payloads = [], []
        for unit, work in zip(rows["unit"], rows["work"]):
            work = json.loads(str(work))
            source = self._unit_source(work["parts"])
            batches = list(encode_batches(self.job, source, self.encoder, work["plan"]))
            units.append(int(unit))
            payloads.append(pickle.dumps(batches, protocol=pickle.HIGHEST_PROTOCOL))
        return {"unit": np.array(units, dtype=np.int64), "payload": np.array(payloads, dtype=object)}


def _worker_class(job: EncodeJob, threads: int) -> type:
    """`_UnitWorker` with the job baked in: a class travels with its attributes, so a restarted actor needs no
    constructor arguments kept alive in the object store."""
    return type("_JobUnitWorker", (_UnitWorker,), {"job": job, "threads": threads, "__module__": __name__})


def _probe(job: EncodeJob) -> tuple[str, int]:
    """Where a worker runs: the precision "auto" resolves to there, and the embedding width."""
    enc = job.load_encoder()
    return enc.precision, enc.embed_dim


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """a Ray cluster (a Ray Data actor pool: one model per actor, units of the plan spread over the actors)"""

    options = (
        Option("address", str, None, help="Ray cluster: auto (this machine's `ray start` cluster), HOST:PORT or "
                                          "ray://HOST:10001; default: a local cluster on 127.0.0.1"),
        Option("num_workers", int, None, help="actors (default: as many as the cluster's CPUs / GPUs allow)"),
        Option("num_cpus_per_worker", float, 1.0,
               help="CPUs each actor reserves (also its threads, unless threads are set)"),
        Option("num_gpus_per_worker", float, 0.0, help="GPUs each actor reserves (fractions share a GPU)"),
        Option("batches_per_unit", int, 8, cli=False,
               help="planned batches per unit of work, for callers that do not group them into units"),
    )

    def __init__(self, job: EncodeJob, address: Optional[str] = None, num_workers: Optional[int] = None,
                 num_cpus_per_worker: float = 1.0, num_gpus_per_worker: float = 0.0, batches_per_unit: int = 8):
        if num_workers is not None and num_workers < 1:
            raise UsageError(f"`num_workers` must be >= 1, got {num_workers}")
        if num_cpus_per_worker <= 0 or num_gpus_per_worker < 0 or batches_per_unit < 1:
            raise UsageError(f"need `num_cpus_per_worker` > 0, `num_gpus_per_worker` >= 0, `batches_per_unit` "
                             f">= 1; got {num_cpus_per_worker}, {num_gpus_per_worker}, {batches_per_unit}")
        self.ray = import_ray()
        self.address = address
        self.cpus, self.gpus, self.batches_per_unit = float(num_cpus_per_worker), float(num_gpus_per_worker), \
            batches_per_unit
        self._started = _connect(self.ray, address)
        try:
            self.num_workers = num_workers or self._fit_workers()
            probe = self.ray.remote(num_cpus=self.cpus, num_gpus=self.gpus)(_probe)
            precision, self.embed_dim = self.ray.get(probe.remote(job))
        except Exception:
            self.close()
            raise
        self.job = replace(job, precision=precision)

    def _fit_workers(self) -> int:
        res = self.ray.cluster_resources()
        if self.gpus > 0:
            if res.get("GPU", 0) < self.gpus:
                raise UsageError(f"`num_gpus_per_worker` {self.gpus}: the Ray cluster has {res.get('GPU', 0)} GPUs")
            return max(1, int(res["GPU"] // self.gpus))
        return max(1, int(res.get("CPU", 1) // self.cpus))

    def describe(self) -> dict:
        return {**super().describe(), "address": self.address, "num_workers": self.num_workers,
                "num_cpus_per_worker": self.cpus, "num_gpus_per_worker": self.gpus}

    def iter_batches(self, plan: Sequence[Sequence[int]], units: Optional[Sequence[int]] = None, *,
                     source=None, progress: Optional[bool] = False,
                     worker_init_fn: Optional[Callable[[int], None]] = None) -> Iterator[ImageBatch]:
        # worker_init_fn is ignored: the actors' decoding workers are not forked from this process
        plan = [[int(p) for p in b] for b in plan]
        groups = plan_units(plan, units, self.batches_per_unit)
        if not groups:
            return
        ray = self.ray
        rows = []
        for u, g in enumerate(groups):
            unit_plan = [plan[b] for b in g]
            parts = [[None, [], []]] if source is None else source.locate([p for b in unit_plan for p in b])
            rows.append({"unit": u, "work": json.dumps({"plan": unit_plan, "parts": parts})})
        _ray_data_console(logging.INFO if log.isEnabledFor(logging.DEBUG) else logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        ctx.execution_options.preserve_order = True  # units come back in plan order
        ctx.enable_progress_bars = bool(progress)
        try:
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block (task) per unit
            pool = ray.data.ActorPoolStrategy(size=min(self.num_workers, len(rows)))
            out = ds.map_batches(_worker_class(self.job, int(self.cpus)), batch_size=1, batch_format="numpy",
                                 compute=pool, num_cpus=self.cpus, num_gpus=self.gpus)
            nxt = 0
            for row in out.iter_rows():
                if int(row["unit"]) != nxt:  # preserve_order guarantees this; a broken promise must not reorder ids
                    raise ClipforgeError(f"Ray returned unit {int(row['unit'])} where unit {nxt} was due")
                nxt += 1
                yield from pickle.loads(row["payload"])
            if nxt != len(groups):
                raise ClipforgeError(f"Ray returned {nxt} of {len(groups)} units")
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved

    def close(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False
