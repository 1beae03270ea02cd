"""Reading files that a collection names, without trusting them to be ordinary files.

A folder a user points clipforge at may hold anything under an image's name: a FIFO (opening it blocks
forever), a socket, a device (`/dev/zero` reads forever), a symlink loop (`stat` fails with ELOOP), a name
with a NUL byte (Python raises ValueError), or a file far larger than any image. Every read of a collection
file goes through `read_regular`, which opens without blocking, checks on the open descriptor that it is a
regular file (no window between the check and the read), and refuses sizes over a cap. Directory tests that
walk a user's folder use `is_dir` / `is_file`, which answer False instead of raising.
"""
from __future__ import annotations

import errno
import os
import stat

# 89.5 Mpx x 4 bytes is ~360 MB of raw pixels; no encoded image of an allowed size is larger than this.
DEFAULT_MAX_FILE_BYTES = 512 * 2**20


class FileRefused(Exception):
    """A path that cannot be read as a regular file. `reason` is a `BadSample` reason; `detail` names it."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path, max_bytes: int | None = DEFAULT_MAX_FILE_BYTES, what: str | None = None) -> bytes:
    """The bytes of a regular file, or `FileRefused(reason, detail)`.

    reasons: missing_file, not_a_file (FIFO, socket, device, directory), too_large, unreadable (permissions,
    symlink loops, NUL bytes in the name, I/O errors). `what` replaces the path in `detail` (so messages shown
    to others need not carry absolute paths).
    """
    name = str(path) if what is None else what
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. Regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileRefused("missing_file", name) from None
    except IsADirectoryError:
        raise FileRefused("not_a_file", f"{name}: a directory") from None
    except OSError as e:
        try:  # sockets cannot be opened at all (ENXIO): say what they are
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise FileRefused("not_a_file", f"{name}: {_kind(mode)}") from None
        why = "a symlink loop" if e.errno == errno.ELOOP else (e.strerror or type(e).__name__)
        raise FileRefused("unreadable", f"{name}: {why}") from None
    except (ValueError, TypeError) as e:  # an embedded NUL byte, a name that is not a path
        raise FileRefused("unreadable", f"{name!r}: {e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused("not_a_file", f"{name}: {_kind(st.st_mode)}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileRefused("too_large", f"{name}: {st.st_size} bytes > max {max_bytes}")
        chunks, total = [], 0
        while True:  # read to EOF (a file growing while read is still capped)
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise FileRefused("too_large", f"{name}: over max {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise FileRefused("unreadable", f"{name}: {e.strerror or type(e).__name__}") from None
    finally:
        os.close(fd)


def read_text(path, max_bytes: int, what: str | None = None) -> str:
    """A small UTF-8 text file (sidecar captions, metadata), undecodable bytes replaced; `FileRefused` else."""
    return read_regular(path, max_bytes, what).decode("utf-8", errors="replace")


def is_dir(entry) -> bool:
    """`os.DirEntry.is_dir()` / `os.path.isdir` that answer False for loops, broken links and odd names."""
    try:
        return entry.is_dir() if isinstance(entry, os.DirEntry) else os.path.isdir(entry)
    except (OSError, ValueError):
        return False


def is_file(entry) -> bool:
    """True only for a regular file (following symlinks); False for loops, FIFOs, devices, odd names."""
    try:
        st = os.stat(entry.path if isinstance(entry, os.DirEntry) else entry)
    except (OSError, ValueError, TypeError):
        return False
    return stat.S_ISREG(st.st_mode)
