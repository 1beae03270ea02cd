"""Exceptions shared by the library and the CLI.

The CLI turns a `UsageError` into one line on stderr and exit code 2, any other `ClipforgeError` into one
line and exit code 1. Library code raises these (never `SystemExit`) so callers can catch them.

A write that fails because its file system is full (ENOSPC), over quota (EDQUOT) or read-only (EROFS) is a
`DiskError`: `disk_error(exc, path)` recognises one whatever wrapped it (an `OSError` anywhere in the chain of
causes, or a library's message carrying the errno, as safetensors' and Arrow's do), so the CLI and the server
can say which path and that nothing was lost instead of showing a traceback.
"""
from __future__ import annotations

import errno as errno_codes
import os
import re
from pathlib import Path
from typing import Optional, Union


class ClipforgeError(Exception):
    """A failure the user can understand and act on (bad file, missing checkpoint, ...)."""


class UsageError(ClipforgeError, ValueError):
    """The caller asked for something invalid: an unknown name, a bad flag value, an unknown config key."""


FULL_ERRNOS = frozenset({errno_codes.ENOSPC, errno_codes.EDQUOT})
READ_ONLY_ERRNOS = frozenset({errno_codes.EROFS})
DISK_ERRNOS = FULL_ERRNOS | READ_ONLY_ERRNOS
# errno as libraries that do not raise OSError print it: "(os error 28)" (Rust: safetensors), "[errno 28]"
# (Arrow), or the C library's text
_ERRNO_TEXT = re.compile(r"(?:os error|errno)\s*(\d+)", re.IGNORECASE)
_STRERROR = {code: os.strerror(code).lower() for code in DISK_ERRNOS}
# atomic.py's temporaries: a file `.NAME.XXXXXXXX.tmp` (mkstemp) and a folder `.NAME.tmp-XXXXXXXX`
_TEMP_NAME = re.compile(r"^\.(.+)\.(?:[A-Za-z0-9_]{8}\.tmp|tmp-[0-9a-f]{8})$")
NOTHING_LOST = "nothing was lost: what was there before is intact, and work already finished is kept"


class DiskError(ClipforgeError):
    """A write failed for want of space (`errno` ENOSPC or EDQUOT) or on a read-only file system (EROFS).
    `path` is the file or folder being written (None when unknown); `note` says what became of the work."""

    def __init__(self, errno: int, path: Optional[Union[str, Path]] = None, note: str = NOTHING_LOST):
        self.errno, self.path, self.note = errno, (None if path is None else str(path)), note
        super().__init__(disk_message(errno, self.path, note))

    @property
    def full(self) -> bool:
        """True for a full disk or quota, False for a read-only file system."""
        return self.errno in FULL_ERRNOS


def disk_message(errno: int, path: Optional[str], note: str = NOTHING_LOST) -> str:
    """One line: which path, what is wrong with its disk, `note` (what became of the work), what to do."""
    where = f"{path}: " if path else ""
    if errno in READ_ONLY_ERRNOS:
        return f"{where}the file system is read-only; {note}. Make it writable or write elsewhere, then run it again"
    what = "disk quota exceeded" if errno == errno_codes.EDQUOT else "no space left on the device (disk full)"
    return f"{where}{what}; {note}. Free some space, then run it again"


def _shown_path(path) -> Optional[str]:
    """`path` as the user knows it: a temporary sibling atomic.py wrote is named by its final name."""
    if path is None or isinstance(path, int):
        return None
    p = Path(os.fsdecode(path))
    return str(Path(*[m.group(1) if (m := _TEMP_NAME.match(part)) else part for part in p.parts]))


def _chain(exc: Optional[BaseException]) -> list:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    return out


def disk_fault(exc: Optional[BaseException]) -> Optional[tuple[int, Optional[str]]]:
    """(errno, path or None) when `exc`, or an exception it was raised from or while handling, says a write
    failed on a full, over-quota or read-only file system; None otherwise. An `OSError` with the errno is
    believed first (it names the file), then a message that carries the errno or its text."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, DiskError):
            return e.errno, e.path
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e.errno, _shown_path(e.filename)
    for e in chain:
        text = str(e).lower()
        for m in _ERRNO_TEXT.finditer(text):
            if int(m.group(1)) in DISK_ERRNOS:
                return int(m.group(1)), None
        for code, words in _STRERROR.items():
            if words in text:
                return code, None
    return None


def disk_error(exc: BaseException, path: Optional[Union[str, Path]] = None,
               note: str = NOTHING_LOST) -> Optional[DiskError]:
    """`exc` as a `DiskError` when it (or what it was raised from) is a full / read-only file system (see
    `disk_fault`), else None. The path is the one the failing call named, else `path` (what was being
    written); an existing `DiskError` keeps its own path and note."""
    if isinstance(exc, DiskError):
        return exc
    fault = disk_fault(exc)
    if fault is None:
        return None
    code, named = fault
    return DiskError(code, named or (None if path is None else _shown_path(path)), note)
