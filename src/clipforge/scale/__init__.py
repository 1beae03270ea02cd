"""clipforge.scale: run an encoding job in this process or on a Ray cluster, with the same results.

A job (`EncodeJob`: source spec, model reference, engine, precision, threads, what to encode) and a plan (the
batches of source positions a caller wants, grouped into units of work) go to an executor, which yields every
planned batch encoded, in plan order. `local` runs `clipforge.encode` here; `ray` runs the very same calls inside
a pool of Ray actors (each loads the model once and reads its units' positions through the data layer's source),
so ids, skip accounting and vectors do not depend on where the job ran. Callers (index builds and updates,
embedding jobs, curation) encode only through an executor and commit what comes back in order, so their
crash-safe resume works the same on both.
"""
from clipforge.scale import local, ray_executor  # noqa: F401  (register the built-in executors)
from clipforge.scale.executor import EXECUTORS, Executor, create_executor, list_executors, plan_units
from clipforge.scale.job import EncodeJob

__all__ = ["EXECUTORS", "Executor", "EncodeJob", "create_executor", "list_executors", "plan_units"]
