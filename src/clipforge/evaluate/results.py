"""Benchmark results as JSON lines: one object per (model, dataset, task) run.

Record fields: model, dataset, task, metrics (scalars), config (what was run), config_hash, templates_hash
(zero-shot runs), versions (python and key packages), time (UTC ISO-8601), elapsed_s.

Appending is crash-safe at the line level: each record is one `write` of one complete line on a file opened
with O_APPEND, followed by flush + fsync, so concurrent writers never interleave inside a line and a crash
loses at most the line being written. Readers skip (and count) lines that do not parse.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import stat
from importlib import metadata
from pathlib import Path

import numpy as np

from clipforge.errors import ClipforgeError, UsageError

__all__ = ["config_hash", "package_versions", "make_record", "append_result", "append_results", "vet_results_file",
           "read_results", "latest_results", "record_key"]

log = logging.getLogger(__name__)
_PACKAGES = ("clipforge", "torch", "numpy", "scikit-learn", "open_clip_torch", "transformers", "faiss-cpu")
REQUIRED = ("model", "dataset", "task", "metrics")


def _clean(x):
    """JSON-safe copy: numpy scalars/arrays -> Python, NaN/inf -> None, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # 0-d torch tensor
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def config_hash(config: dict | None) -> str:
    """Short stable hash of a run configuration (key order does not matter)."""
    canon = json.dumps(_clean(config or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def make_record(
    model: str, dataset: str, task: str, metrics: dict, config: dict | None = None,
    templates_hash: str | None = None, elapsed_s: float | None = None, **extra,
) -> dict:
    """Assemble one result record. Non-scalar diagnostics under metrics["per_query"] are dropped."""
    metrics = {k: v for k, v in metrics.items() if k != "per_query"}
    rec = {
        "model": str(model), "dataset": str(dataset), "task": str(task), "metrics": _clean(metrics),
        "config": _clean(config or {}), "config_hash": config_hash(config), "templates_hash": templates_hash,
        "versions": package_versions(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": None if elapsed_s is None else round(float(elapsed_s), 3),
    }
    rec.update(_clean(extra))
    return rec


def _is_results_file(head: bytes) -> bool:
    """Its first line is a result record (the file's first 64 KiB; an empty file counts)."""
    if not head.strip():
        return True
    try:
        first = json.loads(head.split(b"\n", 1)[0])
    except ValueError:
        return False
    return isinstance(first, dict) and all(k in first for k in REQUIRED)


def vet_results_file(path, param: str = "out") -> Path:
    """Check that records may be appended to `path` (call it before the work that produces them): a new file,
    or a results file (its first line is a record). A folder, link, device or FIFO, or a file of anything
    else, is refused with one `UsageError` line: appending never writes into what clipforge did not write."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return p
    except OSError as e:
        what = "a symbolic link" if os.path.islink(p) else "a folder" if os.path.isdir(p) else None
        raise UsageError(f"`{param}` {p}: " + (f"it is {what}; name a results file" if what else
                                               f"cannot open it ({e.strerror or e})")) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"`{param}` {p} is not a regular file (a folder, device, FIFO or socket): name a "
                             "results file")
        head = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    if not _is_results_file(head):
        raise UsageError(f"`{param}` {p} exists and is not a results file (its first line is not a result "
                         "record): records are only appended to a results file; name a new file")
    return p


def append_result(path, record: dict) -> None:
    """Append one record as a single JSON line (O_APPEND, one write, fsync) to a new file or a results file
    (`vet_results_file`)."""
    append_results(path, [record])


def append_results(path, records: list) -> None:
    """Append `records` as JSON lines in one write (O_APPEND, fsync): together or, after a crash, as a torn
    last line that readers skip (a benchmark cell's several records land as one)."""
    for record in records:
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise UsageError(f"result record lacks {', '.join(missing)}")
    data = "".join(json.dumps(_clean(r), ensure_ascii=False, allow_nan=False) + "\n" for r in records).encode()
    path = vet_results_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the check
            raise UsageError(f"`out` {path} is not a regular file: name a results file")
        written = os.write(fd, data)
        if written != len(data):  # pragma: no cover - regular files do not short-write in practice
            raise ClipforgeError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_results(path) -> list[dict]:
    """All valid records in file order; unparsable or incomplete lines are skipped and counted in a log."""
    path = Path(path)
    if not path.is_file():
        raise ClipforgeError(f"results file {str(path)!r} does not exist")
    out, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
                bad += 1
                continue
            out.append(rec)
    if bad:
        log.warning("%s: skipped %d malformed line(s)", path, bad)
    return out


def record_key(record: dict) -> tuple:
    """What makes two records the same experiment: model, dataset, task and the full configuration (its
    hash; a k-shot probe and a full-data probe of one model are different experiments)."""
    cfg = record.get("config_hash") or config_hash(record.get("config"))
    return record["model"], record["dataset"], record["task"], cfg


def latest_results(records: list[dict]) -> list[dict]:
    """Keep the last record per full configuration (`record_key`), in first-seen order."""
    latest: dict[tuple, dict] = {}
    for r in records:
        latest[record_key(r)] = r  # file order = time order for appends
    return list(latest.values())
