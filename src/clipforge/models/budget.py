"""Memory budget: refuse a model or an adapter that cannot fit before a byte of it is allocated.

A config is a few hundred bytes; the model it describes may be tens of gigabytes. Building one that cannot fit
would allocate until the allocator fails (or the OOM killer ends the process and its neighbours), minutes
later and gigabytes on. So whatever allocates parameters (`build_model`, checkpoint and adapter loading,
`apply_lora`) first prices them from the config or the weight file's header and calls `check_memory`, which
compares the bytes with what this process may still allocate: the least of the kernel's `MemAvailable`, the
cgroup's limit less its usage (containers), and `RLIMIT_AS` less the address space already mapped.
"""
from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Optional

from clipforge.errors import ClipforgeError

__all__ = ["available_memory", "check_memory", "format_bytes", "format_count"]

_CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _read_int(path: str) -> Optional[int]:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _meminfo_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _mapped_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def available_memory() -> tuple[Optional[int], str]:
    """(bytes this process may still allocate, where the bound comes from); (None, "") when nothing says."""
    found: list[tuple[int, str]] = []
    mem = _meminfo_available()
    if mem is None and hasattr(os, "sysconf"):
        try:
            mem = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            mem = None
    if mem is not None:
        found.append((mem, "the memory the kernel reports available"))
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            found.append((max(limit - usage, 0), "the container's memory limit"))
            break
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append((max(soft - _mapped_bytes(), 0), "the address-space limit, RLIMIT_AS"))
    if not found:
        return None, ""
    return min(found)


def format_bytes(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def format_count(n: float) -> str:
    """A parameter count for an error line: 17.73 B, 285.3 M, 12.5 k."""
    return f"{n / 1e9:,.2f} B" if n >= 1e8 else f"{n / 1e6:,.1f} M" if n >= 1e5 else f"{n / 1e3:,.1f} k"


def check_memory(need: int, what: str) -> None:
    """`ClipforgeError` (one line) when `need` bytes for `what` exceed what this process may allocate."""
    have, source = available_memory()
    if have is not None and need > have:
        raise ClipforgeError(f"{what} needs {format_bytes(need)} of memory, but only {format_bytes(have)} can be "
                             f"allocated here (by {source}): refused before allocating anything (check the sizes "
                             "in its config, or use a machine with more memory)")
