"""The index file format: 8 magic bytes, the JSON header's length, a JSON header, then faiss's serialisation.

The header holds the kind, its parameters and free-form facts (`info`, e.g. measured recall). Written
atomically. An IVF index whose inverted lists live on disk (`sharded.merge_shards(on_disk=True)`) is saved in
the directory of its `.ivfdata` file as the header file plus a plain faiss file that names the lists by base
name; the header, written last, is the commit point. Sharded-index manifests use the same header framing
with their own magic (`sharded.py`).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import faiss

from clipforge.atomic import atomic_write, atomic_write_path
from clipforge.errors import ClipforgeError, UsageError

__all__ = ["INDEX_MAGIC", "header_bytes", "read_header", "write_index_file", "read_index_file"]

INDEX_MAGIC = b"CFINDEX1"  # first bytes of every index file clipforge writes


def header_bytes(magic: bytes, header: dict) -> bytes:
    """The start of every clipforge index file: 8 magic bytes, the JSON header's length, the header."""
    data = json.dumps(header).encode()
    return magic + struct.pack("<Q", len(data)) + data


def read_header(f, magic: bytes) -> dict | None:
    """The JSON header of a file written with header_bytes(magic, ...), or None if the magic differs."""
    if f.read(len(magic)) != magic:
        return None
    (n,) = struct.unpack("<Q", f.read(8))
    return json.loads(f.read(n))


def write_index_file(path, index: faiss.Index, head: dict, on_disk_lists=None) -> None:
    """Save a faiss index with its header at path; `on_disk_lists`: the index's OnDiskInvertedLists, if any."""
    path = Path(path)
    head = dict(head)
    odl = on_disk_lists
    if odl is not None:
        data = Path(odl.filename)
        if data.parent.resolve() != path.parent.resolve():
            raise UsageError(f"an on-disk index is saved beside its lists file {data}: choose a path in "
                             f"{data.parent}")
        old = _faiss_files(path)
        head["faiss_file"] = f"{path.name}.{time.time_ns():x}.faiss"
        head["ivfdata"] = data.name
        atomic_write_path(path.parent / head["faiss_file"], lambda tmp: faiss.write_index(index, tmp))

    def write(f) -> None:
        f.write(header_bytes(INDEX_MAGIC, head))
        if odl is None:
            writer = faiss.PyCallbackIOWriter(f.write)
            faiss.write_index(index, writer)
            del writer

    atomic_write(path, write)
    if odl is not None:  # files of the previous save at this path, no longer named by the header
        for name in old - {head["faiss_file"], head["ivfdata"]}:
            (path.parent / name).unlink(missing_ok=True)


def _faiss_files(path: Path) -> set:
    """Side files an on-disk index saved at path refers to now (empty for a one-file index)."""
    try:
        with open(path, "rb") as f:
            h = read_header(f, INDEX_MAGIC) or {}
    except (OSError, ValueError, struct.error):
        return set()
    return {h[k] for k in ("faiss_file", "ivfdata") if k in h}


def read_index_file(path) -> tuple[faiss.Index, dict]:
    """(the faiss index, the header) of an index file; anything else is a one-line `ClipforgeError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = read_header(f, INDEX_MAGIC)
            if header is None:
                raise ClipforgeError(f"{path}: not a clipforge index file")
            if "faiss_file" in header:  # lists on disk: faiss finds .ivfdata in the faiss file's directory
                index = faiss.read_index(str(path.parent / header["faiss_file"]), faiss.IO_FLAG_ONDISK_SAME_DIR)
            else:
                index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
    except (OSError, RuntimeError, ValueError, struct.error) as e:
        raise ClipforgeError(f"{path}: cannot read index ({e})") from e
    return index, header
