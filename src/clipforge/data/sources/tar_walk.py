"""A shard's tar members grouped into samples, each member checked against its byte cap before it is read.

A sample is the group of consecutive members sharing a key (webdataset's rule). Non-regular members are
counted as `not_a_file` and never read; a member name repeated within a sample is a `bad_record`; how the
shard ended (cut, damaged, unreadable) is counted once for the shard (`clipforge.data.sources.wds` says what
each reason means).
"""
from __future__ import annotations

import re
import tarfile
from typing import Callable, Iterator, NamedTuple

from clipforge.data.decode import SkipCounter
from clipforge.data.sources.tar_bytes import Cut, TarBytes

_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own rule for metadata members
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


def _header_class(stops: list):
    """A `TarInfo` that records each header error: `tarfile` ends its iteration silently at a cut or damaged
    header after the first, and the reader must tell that from a proper end-of-archive block."""

    class _Header(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tf):
            try:
                return super().fromtarfile(tf)
            except tarfile.HeaderError as e:
                stops.append(e)
                raise

    return _Header


class Refused(NamedTuple):
    """A member over its cap, not read."""

    name: str
    size: int
    cap: int


def _is_file(m: tarfile.TarInfo) -> bool:
    return m.type in _FILE_TYPES and m.sparse is None


def _ending(error, stops: list, stream: TarBytes | None) -> tuple[str, str] | None:
    """How a shard's walk ended: None for a proper end, else (reason, what happened)."""
    last = stops[-1] if stops else None
    at = f"at byte {stream.pos}" if stream is not None else "at its start"
    cut = (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)
    if error is None and (last is None or isinstance(last, tarfile.EOFHeaderError)):
        return None
    if isinstance(error, Cut):
        return "shard_truncated", str(error)
    if (stream is not None and stream.short) or any(isinstance(s, cut) for s in stops):
        return "shard_truncated", f"the shard ends early, {at}"
    if isinstance(error, OSError) and not isinstance(error, tarfile.TarError):  # I/O, a failed `pipe:`
        return "unreadable", f"{at}: {error.strerror or error}"
    what = error if error is not None else last
    return "bad_record", f"damaged {at}: {str(what) or 'unreadable'}"


def walk(raw, take: Callable, caps: Callable, url: str, found: SkipCounter, *,
          allow_compressed: bool = True) -> Iterator[tuple[str, dict]]:
    """(key, {ext: take(stream, member)}) for every sample of the shard open as `raw`, in tar order.

    `caps(ext, group)` is the byte cap of a member a reader uses, None for one it does not (never taken); a
    member over its cap is a `Refused` in the group. Non-regular members are counted in `found` and never
    taken; the shard's ending is counted there once. A sample whose member was cut is not yielded.
    """
    stops: list = []
    key, group, spoiled, error, stream = None, {}, False, None, None
    try:
        stream = TarBytes(raw, allow_compressed=allow_compressed)
        tf = tarfile.TarFile(fileobj=stream, mode="r", tarinfo=_header_class(stops))
        in_group = False  # the last member seen belongs to `group` (its data is skipped by the next header)
        while True:
            n_stops = len(stops)
            try:
                m = tf.next()
            except Exception:
                if len(stops) == n_stops and in_group:  # not a header: the data of the member before it
                    spoiled = True
                raise
            if m is None:
                if stream.make is not None and (not stops or isinstance(stops[-1], tarfile.EOFHeaderError)):
                    stream.verify_rest()
                break
            tf.members = []  # tarfile keeps every header it reads; a shard may have millions
            in_group = False
            if m.isdir():
                continue
            if not _is_file(m):
                found.add(m.name, "not_a_file")
                continue
            match = None if _SKIP_META.match(m.name) else _KEY_RE.match(m.name)
            if not match:
                continue
            k, ext = match.group(1), match.group(2).lower()
            if k != key:
                if key is not None and not spoiled:
                    yield key, group
                key, group, spoiled = k, {}, False
            if ext in group:
                found.add(m.name, "bad_record")  # a repeated member name
                continue
            in_group = True
            cap = caps(ext, group)
            if cap is not None:
                try:
                    group[ext] = Refused(m.name, m.size, cap) if m.size > cap else take(stream, m)
                except Exception:
                    spoiled = True
                    raise
    except Exception as e:  # noqa: BLE001 - tarfile and the codecs raise many types for a broken shard
        error = e
    if key is not None and not spoiled:
        yield key, group
    ending = _ending(error, stops, stream)
    if ending is not None:
        found.add(f"{url}: {ending[1]}", ending[0])
