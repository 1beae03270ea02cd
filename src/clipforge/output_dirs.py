"""Output paths: clipforge never deletes or replaces what it did not write.

Every folder clipforge writes as a whole (a checkpoint, an adapter, an export, a demo set, a reinforcement store,
a training run, a converted shard folder, a demo tour) carries a small marker, `.clipforge.json`, naming its
kind. Before writing to a path, `vet_output_dir` decides:

- nothing there: written;
- an empty directory, or a clipforge artifact of the same kind (the marker, or the files an older version
  wrote): replaced (whole-folder writers) or continued (runs, shard folders);
- a non-empty directory of anything else: refused, unless `overwrite=True`;
- a symbolic link, a device, a FIFO or a socket: always refused, `overwrite` or not (clipforge never follows
  into a link or replaces a device node); a regular file: refused unless `overwrite=True`;
- the current working directory, one of its parents, or a mount point: refused (a folder cannot be swapped
  from under the shell that is in it, nor renamed off its mount).

A file a user names as an output (predictions, a contact sheet, a manifest, a scores file, a head, a
report, an index template or shard) follows the same rule through `OutputFile` / `vet_output_file`:

- nothing there: written, and never over a file that appeared meanwhile (published with a hard link, which
  fails if the name was taken);
- a regular file: replaced only when `overwrite=True`, or when the writer recognises it as its own earlier
  output (`owned`);
- a folder, a symbolic link, a device, a FIFO or a socket: always refused.

Files clipforge keeps inside its own artifacts (a store's manifest, index.json, checkpoints) are replaced
freely by `atomic.atomic_write`: the folder's marker already says they are clipforge's.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Optional, Union

from clipforge.errors import UsageError

__all__ = ["MARKER_FILE", "artifact_kind", "vet_output_dir", "write_marker", "claim_output_dir", "move_aside",
           "OutputFile", "vet_output_file", "file_head", "file_starts_with", "png_marked", "PNG_MARK_KEY"]

PathLike = Union[str, Path]
MARKER_FILE = ".clipforge.json"
_MAX_MARKER_BYTES = 4096
Recognise = Optional[Callable[[Path], bool]]


def artifact_kind(path: PathLike) -> Optional[str]:
    """The kind a clipforge marker in `path` names, or None (no marker, unreadable, or not one of ours)."""
    f = Path(path) / MARKER_FILE
    try:
        if not f.is_file() or f.is_symlink() or f.stat().st_size > _MAX_MARKER_BYTES:
            return None
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    return kind if isinstance(kind, str) else None


def write_marker(path: PathLike, kind: str) -> None:
    """Mark `path` (a directory clipforge is writing) as a clipforge artifact of `kind`."""
    # temp + rename: a full disk must never leave an empty marker that makes the rerun refuse the folder
    final = Path(path) / MARKER_FILE
    tmp = final.with_name(f".{MARKER_FILE}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps({"format": "clipforge", "kind": kind}))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _what(mode: int) -> Optional[str]:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None


def _holds_cwd(path: Path) -> bool:
    try:
        cwd = Path(os.getcwd()).resolve()
    except OSError:
        return False
    p = path.resolve()
    return cwd == p or p in cwd.parents


def _inspect(path: PathLike, param: str, noun: str) -> tuple[Path, Optional[os.stat_result]]:
    """(absolute path, its lstat or None when nothing is there); a link, device, FIFO or socket is refused."""
    if str(path).strip() == "":
        raise UsageError(f"`{param}` is empty: name the {noun} to write")
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p, None
    except OSError as e:
        raise UsageError(f"`{param}` {p}: cannot inspect it ({e.strerror or e})") from None
    special = _what(st.st_mode)
    if special is not None:
        raise UsageError(f"`{param}` {p} is {special}: clipforge never writes through or replaces one; "
                         f"name a new {noun}")
    return p, st


def vet_output_dir(path: PathLike, kind: str, *, overwrite: bool = False, recognise: Recognise = None,
                   param: str = "out", overwritable: bool = True) -> tuple[Path, str]:
    """Check that clipforge may write a `kind` folder at `path`; return (absolute path, state) where state is
    "new" (nothing there), "empty", "same" (a `kind` artifact), or "other" (replaceable only because
    `overwrite`). `recognise(dir)` tells an artifact an older version wrote (without a marker). A refusal is
    one `UsageError` line naming `param` and, where the writer takes one (`overwritable`), `overwrite`."""
    hint = ", or pass `overwrite` to replace it" if overwritable else ""
    p, st = _inspect(path, param, "folder")
    if st is None:
        return p, "new"
    if not stat.S_ISDIR(st.st_mode):
        if overwrite:
            return p, "other"
        raise UsageError(f"`{param}` {p} is a file, not a folder: name a new folder{hint}")
    if _holds_cwd(p):
        raise UsageError(f"`{param}` {p} is the current directory or holds it: name a new folder inside it")
    if os.path.ismount(p):
        raise UsageError(f"`{param}` {p} is a mount point: name a new folder inside it")
    try:
        with os.scandir(p) as it:
            entries = sorted(e.name for _, e in zip(range(4), it))
    except OSError as e:
        raise UsageError(f"`{param}` {p}: cannot list it ({e.strerror or e})") from None
    if not entries:
        return p, "empty"
    found = artifact_kind(p)
    if found == kind or (found is None and recognise is not None and _recognised(recognise, p)):
        return p, "same"
    if overwrite:
        return p, "other"
    what = f"a clipforge {found}" if found else f"not a clipforge {kind} (it holds {', '.join(entries[:3])}" + \
        (", ..." if len(entries) > 3 else "") + ")"
    raise UsageError(f"`{param}` {p} exists and is {what}: choose a new or empty folder{hint}")


def vet_output_file(path: PathLike, *, overwrite: bool = False, param: str = "out", owned: Recognise = None,
                    overwritable: bool = True) -> tuple[Path, str]:
    """Check that clipforge may write a file at `path`; return (absolute path, state) where state is "new"
    (nothing there), "same" (a regular file `owned(path)` recognises as this writer's earlier output) or
    "other" (a regular file replaceable only because `overwrite`). A refusal is one `UsageError` line naming
    `param` and, where the writer takes one (`overwritable`), `overwrite`."""
    p, st = _inspect(path, param, "file")
    if st is None:
        return p, "new"
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"`{param}` {p} is a folder: name a file to write")
    if owned is not None and _recognised(owned, p):
        return p, "same"
    if overwrite:
        return p, "other"
    hint = ", or pass `overwrite` to replace it" if overwritable else ""
    raise UsageError(f"`{param}` {p} exists: clipforge replaces a file it did not write only when asked; "
                     f"name a new file{hint}")


PNG_MARK_KEY = "clipforge"  # a PNG clipforge draws carries a tEXt chunk clipforge=<kind>
_SNIFF_BYTES = 1 << 16


def file_head(path: Path, n: int) -> bytes:
    """The first `n` bytes of the regular file `path` (never blocks on a FIFO swapped in, never follows a link)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, n)
    finally:
        os.close(fd)


def file_starts_with(*prefixes: bytes) -> Callable[[Path], bool]:
    """`owned` for text outputs whose first bytes say what wrote them (a CSV header, a report's first line)."""
    n = max(len(x) for x in prefixes)
    return lambda p: file_head(p, n).startswith(prefixes)


def png_marked(kind: str) -> Callable[[Path], bool]:
    """`owned` for PNGs clipforge drew: a `clipforge` tEXt chunk naming `kind`, before the image data."""
    chunk = b"tEXt" + PNG_MARK_KEY.encode() + b"\0" + kind.encode()

    def owned(p: Path) -> bool:
        head = file_head(p, _SNIFF_BYTES)
        return head.startswith(b"\x89PNG") and chunk in head
    return owned


@dataclass(frozen=True)
class OutputFile:
    """How a user-named output file may be written (see the module docstring): `atomic.atomic_write(...,
    output=OutputFile(overwrite=...))` vets the path before writing and again when publishing."""
    overwrite: bool = False
    param: str = "out"
    owned: Recognise = None
    overwritable: bool = True

    def vet(self, path: PathLike) -> tuple[Path, str]:
        return vet_output_file(path, overwrite=self.overwrite, param=self.param, owned=self.owned,
                               overwritable=self.overwritable)


def _recognised(recognise: Callable[[Path], bool], p: Path) -> bool:
    try:
        return bool(recognise(p))
    except (OSError, ValueError):
        return False


def move_aside(path: Path) -> Path:
    """Rename `path` to a hidden sibling (deleted by the caller once the replacement is in place)."""
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    return old


def claim_output_dir(path: PathLike, kind: str, *, overwrite: bool = False, recognise: Recognise = None,
                     param: str = "out", fresh: bool = False, overwritable: bool = True) -> tuple[Path, bool]:
    """For writers that fill a folder in place (training runs, shard folders, tours): vet `path`, replace what
    `overwrite` allows replacing with a fresh folder, create it and mark it. Returns (path, continued) where
    `continued` says it already was a `kind` artifact (a run to resume, a conversion to redo). `fresh`: replace
    a `kind` artifact too (a run started again from scratch)."""
    p, state = vet_output_dir(path, kind, overwrite=overwrite, recognise=recognise, param=param,
                              overwritable=overwritable)
    if state == "other" or (fresh and state == "same"):  # the user asked for it to be replaced
        state = "new"
        old = move_aside(p)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    try:
        p.mkdir(parents=True, exist_ok=True)
        if artifact_kind(p) != kind:
            write_marker(p, kind)
    except OSError as e:
        raise UsageError(f"`{param}` {p}: cannot create it ({e.strerror or e})") from None
    return p, state == "same"
