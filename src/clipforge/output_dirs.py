"""Output directories: clipforge never deletes or replaces what it did not write.

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
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Callable, Optional, Union

from clipforge.errors import UsageError

__all__ = ["MARKER_FILE", "artifact_kind", "vet_output_dir", "write_marker", "claim_output_dir", "move_aside"]

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


def vet_output_dir(path: PathLike, kind: str, *, overwrite: bool = False, recognise: Recognise = None,
                   param: str = "out", overwritable: bool = True) -> tuple[Path, str]:
    """Check that clipforge may write a `kind` folder at `path`; return (absolute path, state) where state is
    "new" (nothing there), "empty", "same" (a `kind` artifact), or "other" (replaceable only because
    `overwrite`). `recognise(dir)` tells an artifact an older version wrote (without a marker). A refusal is
    one `UsageError` line naming `param` and, where the writer takes one (`overwritable`), `overwrite`."""
    hint = ", or pass `overwrite` to replace it" if overwritable else ""
    if str(path).strip() == "":
        raise UsageError(f"`{param}` is empty: name the folder to write")
    p = Path(os.path.abspath(os.path.expanduser(str(path))))
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p, "new"
    except OSError as e:
        raise UsageError(f"`{param}` {p}: cannot inspect it ({e.strerror or e})") from None
    special = _what(st.st_mode)
    if special is not None:
        raise UsageError(f"`{param}` {p} is {special}: clipforge never writes through or replaces one; "
                         "name a new folder")
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
