"""One writer per embedding store: an exclusive, non-blocking flock on ROOT/.writer.lock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from clipforge.errors import ClipforgeError

__all__ = ["StoreBusy", "writer_lock", "LOCK_FILE"]

LOCK_FILE = ".writer.lock"


class StoreBusy(ClipforgeError):
    """Another writer holds the store's lock (an index build, update or delete is running)."""


def writer_lock(root: Path) -> int:
    """The lock's file descriptor, held until closed (closing releases the flock); `StoreBusy` when another
    process holds it."""
    fd = os.open(Path(root) / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreBusy(f"{root}: another process is writing this store") from None
    return fd
