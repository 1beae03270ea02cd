"""Progress of a long job: a tqdm bar on a terminal, log lines everywhere else.

Every long loop in clipforge (encoding batches for `index build`, `embed-dataset`, curation scoring and
evaluation; the few-shot protocol's fits; data conversion and checks; feature caches) reports through one
`Progress`, so a job whose stderr is a file or a pipe (a log, CI, `nohup`, `| tee`) is never silent:

- `progress=True`: a tqdm bar, even when stderr is not a terminal (as before);
- `progress=False`: nothing;
- `progress=None` (the default): a bar when stderr is a terminal; otherwise one INFO line on the
  `clipforge.progress` logger every `interval` seconds with done/total, rate, elapsed time and ETA, and a
  final line when the job ends (for a job that ran at least a second or already logged a line).

`interval` defaults to the environment variable `CLIPFORGE_PROGRESS_INTERVAL` (seconds), else 10 s. Library
code never prints: the lines go through `logging`, which the CLI sends to stderr at INFO; a Python caller
sees them once it configures logging (`logging.basicConfig(level=logging.INFO)`).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from tqdm.auto import tqdm

from clipforge.errors import UsageError

__all__ = ["Progress", "track", "format_duration", "progress_interval", "INTERVAL_ENV", "DEFAULT_INTERVAL_S"]

log = logging.getLogger(__name__)
INTERVAL_ENV = "CLIPFORGE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
FINAL_LINE_MIN_S = 1.0  # a job quicker than this (and that logged nothing yet) ends without a line
T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """12 -> "12s", 95 -> "1m35s", 3725 -> "1h02m05s"."""
    seconds = int(round(max(seconds, 0)))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def progress_interval(interval: Optional[float] = None) -> float:
    """Seconds between two progress log lines: `interval`, else the environment's `CLIPFORGE_PROGRESS_INTERVAL`,
    else 10."""
    if interval is None:
        raw = os.environ.get(INTERVAL_ENV, "").strip()
        if not raw:
            return DEFAULT_INTERVAL_S
        try:
            interval = float(raw)
        except ValueError:
            raise UsageError(f"{INTERVAL_ENV} must be a number of seconds, got {raw!r}") from None
        if not interval >= 0:
            raise UsageError(f"{INTERVAL_ENV} must be a number of seconds >= 0, got {raw!r}")
        return interval
    if not interval >= 0:
        raise UsageError(f"`interval` must be >= 0 seconds, got {interval!r}")
    return float(interval)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _rate(n: float, unit: str, seconds: float) -> str:
    if seconds <= 0:
        return f"- {unit}/s"
    r = n / seconds
    return f"{r:.1f} {unit}/s" if r >= 1 else f"{r * 60:.1f} {unit}/min"


class Progress:
    """One job's progress: `update(n)` as work is done, `set_postfix(...)` for what it is on, `close()` at the
    end (or use it as a context manager). `total` may be None (a stream of unknown length: no ETA).

    `stream`: where a bar goes and whose `isatty()` picks the mode (default `sys.stderr`). `interval`: seconds
    between log lines (see `progress_interval`). `initial`: work already done before (a resumed job); the rate
    counts only what this run does.
    """

    def __init__(self, total: Optional[int] = None, *, desc: str = "", unit: str = "it",
                 progress: Optional[bool] = None, initial: int = 0, interval: Optional[float] = None,
                 stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = int(initial)
        self.postfix: dict = {}
        self.lines = 0  # log lines written so far
        self._closed = False
        self._bar = None
        if progress is False:
            self.mode = "off"
        elif progress is True or _is_terminal(stream if stream is not None else sys.stderr):
            self.mode = "bar"
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, disable=False)
        else:
            self.mode = "log" if log.isEnabledFor(logging.INFO) else "off"
        self.interval = progress_interval(interval) if self.mode == "log" else DEFAULT_INTERVAL_S
        self._t0 = self._t_last = time.monotonic()

    @property
    def disable(self) -> bool:
        """True when no bar is drawn (log lines or nothing), as tqdm's attribute of that name."""
        return self.mode != "bar"

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._t_last >= self.interval:
                self._t_last = now
                self._line()

    def set_postfix(self, **values) -> None:
        """What the job is on (e.g. method=..., k=...): the bar's postfix, or the end of each log line."""
        self.postfix = {k: v for k, v in values.items() if v is not None}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def _line(self) -> None:
        elapsed = time.monotonic() - self._t0
        done = self.n - self._start_n
        parts = [f"{self.desc}: {self.n}"]
        if self.total:
            parts[0] += f"/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts += [_rate(done, self.unit, elapsed), f"elapsed {format_duration(elapsed)}"]
        if self.total and done > 0:
            parts.append(f"ETA {format_duration(elapsed / done * max(self.total - self.n, 0))}")
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        log.info(", ".join(parts))
        self.lines += 1

    def close(self) -> None:
        """End the bar, or write the final log line (done/total, rate, time taken)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
            return
        if self.mode != "log":
            return
        elapsed = time.monotonic() - self._t0
        if not self.lines and elapsed < min(self.interval, FINAL_LINE_MIN_S):
            return
        done = self.n - self._start_n
        what = f"{self.n}/{self.total}" if self.total else str(self.n)
        state = "done" if self.total is None or self.n >= self.total else "stopped at"
        log.info("%s: %s %s %s in %s, %s", self.desc, state, what, self.unit, format_duration(elapsed),
                 _rate(done, self.unit, elapsed))
        self.lines += 1

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable[T], total: Optional[int] = None, **kw) -> Iterator[T]:
    """Yield the items of `iterable`, counting one step each (keyword arguments: `Progress`'s). `total`
    defaults to `len(iterable)` when it has one."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, **kw) as bar:
        for item in iterable:
            yield item
            bar.update(1)
