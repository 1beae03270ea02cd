"""Atomic writes: a file or directory appears under its final name complete, or not at all.

Everything clipforge writes that a crash could leave half-done (checkpoints, tokenizers, heads, index files,
store manifests) goes through here: write to a temporary sibling, fsync, then `os.replace`.

Files get the permissions any other new file would (0666 minus the umask: 0644 under umask 022), not the 0600
of `tempfile.mkstemp`, so a web server or a teammate under another user can read an index or a checkpoint.
A missing or unwritable destination folder is a `ClipforgeError` naming it.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

from clipforge.errors import ClipforgeError, UsageError
from clipforge.output_dirs import OutputFile, move_aside, vet_output_dir, write_marker

PathLike = Union[str, Path]
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # elsewhere: set and restore (briefly visible to other threads creating files)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _new_file_mode(old_mode: int = 0) -> int:
    """0666 (plus any execute bits the file had) minus the umask: what `open()` would have created."""
    return (0o666 | (old_mode & 0o111)) & ~current_umask()


def _honour_umask(path: PathLike) -> None:
    """Some writers (safetensors' save_file) create files 0600 whatever the umask: give the usual mode."""
    try:
        os.chmod(path, _new_file_mode(os.stat(path).st_mode))
    except OSError:  # a filesystem without permissions
        pass


def _check_file_target(path: Path) -> None:
    """A file is only ever replaced by a file: a folder, link, device, FIFO or socket there is refused."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else \
            "a device, FIFO or socket"
        raise UsageError(f"cannot write {path}: it is {what}, and clipforge replaces only files; name a new file")


def temp_sibling(path: PathLike) -> tuple[int, str]:
    """(fd, name) of a new temporary file beside `path`, with the permissions the umask gives new files.
    Refused when `path` exists and is not a regular file."""
    path = Path(path)
    _check_file_target(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileNotFoundError:
        raise ClipforgeError(f"cannot write {path}: folder {path.parent} does not exist") from None
    except OSError as e:
        raise ClipforgeError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, _new_file_mode())
    except OSError:  # e.g. a filesystem without permissions: keep mkstemp's mode
        pass
    return fd, tmp


def _publish(tmp: str, path: Path, output: Optional[OutputFile]) -> None:
    """Rename the finished `tmp` onto `path`. A user-named output (`output`) is vetted again first; a new one
    is published with a hard link, which fails rather than replace a file that appeared while writing."""
    if output is None:
        os.replace(tmp, path)
        return
    _, state = output.vet(path)
    if state == "new":
        try:
            os.link(tmp, path)
        except FileExistsError:
            output.vet(path)  # someone else's file appeared meanwhile: refused, unless replaceable
        except OSError:  # a filesystem without hard links: rename (the name was free an instant ago)
            pass
        else:
            os.unlink(tmp)
            return
    os.replace(tmp, path)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object], *,
                 output: Optional[OutputFile] = None) -> Path:
    """Call `write(binary_file)` on a temp file beside `path`, fsync, then rename onto `path`.
    `output`: `path` is a file the user named, written under that policy (`output_dirs.OutputFile`) — checked
    before `write` runs and again before the rename; None: a file inside clipforge's own artifact."""
    path = Path(path)
    if output is not None:
        path, _ = output.vet(path)
    fd, tmp = temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_path(path: PathLike, write: Callable[[str], object], *,
                      output: Optional[OutputFile] = None) -> Path:
    """For writers that take a file name (safetensors' save_file, PIL's save): `write(tmp_name)`, then rename.
    `output` as in `atomic_write`."""
    path = Path(path)
    if output is not None:
        path, _ = output.vet(path)
    fd, tmp = temp_sibling(path)
    os.close(fd)
    try:
        write(tmp)
        _honour_umask(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _publish(tmp, path, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: PathLike, text: str, *, output: Optional[OutputFile] = None) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), output=output)


def atomic_write_json(path: PathLike, obj: Any, indent: int = 1, *, output: Optional[OutputFile] = None) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent, sort_keys=True).encode()),
                        output=output)


def atomic_directory(path: PathLike, write: Callable[[Path], object], *, kind: str, overwrite: bool = False,
                     recognise: Optional[Callable[[Path], bool]] = None, param: str = "out",
                     overwritable: bool = True) -> Path:
    """Run `write(tmp_dir)` in a temporary sibling directory, fsync its files, then swap it in for `path`.

    `path` must be new, empty, or a clipforge artifact of the same `kind` (`output_dirs.vet_output_dir`);
    anything else is refused before `write` runs, unless `overwrite`. The folder gets the `kind` marker.
    """
    vet = dict(overwrite=overwrite, recognise=recognise, param=param, overwritable=overwritable)
    path, _ = vet_output_dir(path, kind, **vet)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as e:
        raise ClipforgeError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        write(tmp)
        write_marker(tmp, kind)
        for f in tmp.rglob("*"):
            if f.is_file():
                _honour_umask(f)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if os.path.lexists(path):
            vet_output_dir(path, kind, **vet)  # still replaceable now that the write is done?
            old = move_aside(path)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
