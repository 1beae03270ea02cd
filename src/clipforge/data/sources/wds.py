"""WebDataset tar shards: `wds:DIR`, `wds:path/{000..009}.tar`, `wds:a.tar::b.tar`.

A sample is the group of consecutive tar members sharing a key (`0001.jpg`, `0001.txt`, `0001.json`,
`0001.cls`). Images: jpg/jpeg/png/webp/...; captions: each non-empty line of `.txt`, or `captions`/`caption`
in `.json`; label: `.cls` (an integer) or `label` in `.json`. The id is the `id` stored in `.json` when
present (clipforge writes the source id there, so a round trip keeps ids that contain dots), else `__key__`.

Local, uncompressed shards are map-style: on first `len()` / `[i]` the tar headers are scanned once (no member
data read) into an offset index, which gives the random access that deterministic shuffling and exact resume
need; a sample's image is read from its shard only when it is decoded. Compressed (gzip, bzip2, xz) and remote
shards are read in order only: `len()` and `[i]` raise `StreamingOnly`, a one-line `UsageError`. What a shard
holds that cannot be a sample (below) is counted when the index is built (`open_skipped`; such samples are no
positions of the index) or, read in order, during the pass (`skipped`): the same counts either way.

Every shard is read as untrusted bytes, with memory bounded whatever its headers claim:

- Only the members a reader uses are read — the first image of a sample, `.txt`, `.json`, `.cls` — each
  checked against a cap from its header before a byte of it is read: `max_image_bytes` (the files reader's
  per-file cap, `clipforge.data.fs.DEFAULT_MAX_FILE_BYTES`) and `max_text_bytes` (the files reader's sidecar
  cap). A sample with a member over its cap is skipped as `member_too_large`. Other members (`.npy`, a second
  image) are never read, so they cannot spoil a sample; in a compressed shard they are decompressed and
  dropped a block at a time. Captions are then cut to `max_caption_bytes` (`caption_truncated` in `notes`).
- Non-regular members — symlinks, hard links, devices, FIFOs, sparse files and members of unknown type — are
  never followed or read: each one is counted as `not_a_file`, named by its member name (a count of members,
  not of samples); the regular members of its sample are still read. Directory entries are passed over.
- A shard that ends early — inside a header, inside a member's data, before its end-of-archive blocks, or in
  a compressed stream that stops before its end — yields every whole sample before the cut and counts
  `shard_truncated` once for the shard; one that is damaged (a bad header checksum, corrupt compressed data)
  counts `bad_record` once the same way, and one that cannot be read (an I/O error, a failed `pipe:` command)
  `unreadable`. After a compressed tar's end its stream is read on to the codec's checksum (up to
  `_VERIFY_BYTES`), so corruption before the end blocks is found too. A member name repeated within a sample
  is counted as `bad_record` (webdataset's rule) and not read. No read of tar metadata (a pax or GNU long-name
  header) may exceed `_MAX_HEADER_BYTES`.
"""
from __future__ import annotations

import bz2
import lzma
import os
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

from clipforge.data.captions import check_byte_cap
from clipforge.data.decode import BadSample, SkipCounter
from clipforge.data.fs import DEFAULT_MAX_FILE_BYTES, FileRefused, is_file, read_text
from clipforge.data.sample import Sample
from clipforge.data.sources.base import Source, StreamingOnly
from clipforge.data.sources.files import MAX_SIDECAR_BYTES, as_label, captions_from_meta, parse_json, split_captions
from clipforge.data.sources.folder import IMAGE_EXTS
from clipforge.data.sources.trust import check_commands, is_stored
from clipforge.errors import ClipforgeError

_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own rule for metadata members
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
TEXT_EXTS = ("txt", "json", "cls")
_CHUNK = 1 << 20  # the most a compressed shard is decompressed at a time
_COMPRESSED_CHUNK = 1 << 16  # compressed bytes fed at a time (zlib copies what it leaves over on each call)
_VERIFY_BYTES = 16 << 20  # decompressed after a compressed tar's end, to reach the codec's checksum
_MAX_HEADER_BYTES = 1 << 20  # a pax / GNU long-name header claiming more is a damaged shard, not read
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_COMPRESSED = ((re.compile(rb"\x1f\x8b\x08"), lambda: zlib.decompressobj(31)),  # gzip
               (re.compile(rb"BZh[1-9]1AY&SY"), bz2.BZ2Decompressor),
               (re.compile(rb"\xfd7zXZ\x00"), lzma.LZMADecompressor))


def expand_shards(pattern: str) -> list[str]:
    """`DIR` -> its *.tar files; otherwise '::'-separated brace patterns, expanded in order."""
    if os.path.isdir(pattern):
        names = sorted(n for n in os.listdir(pattern) if n.endswith((".tar", ".tar.gz", ".tgz")))
        if not names:
            raise ClipforgeError(f"folder {pattern!r} has no .tar shards")
        return [os.path.join(pattern, n) for n in names]
    from webdataset.shardlists import expand_urls

    urls = expand_urls(pattern)
    if not urls:
        raise ClipforgeError(f"shard pattern {pattern!r} names no shards")
    return urls


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _is_image_ext(ext: str) -> bool:
    return ext.lower() in IMAGE_EXTS or ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS


def image_key(files: dict) -> str | None:
    for ext in files:
        if _is_image_ext(ext):
            return ext
    return None


# --- reading a shard's bytes ---------------------------------------------------------------------------------

class _Cut(Exception):
    """The shard's bytes end inside a member."""


class _TarBytes:
    """The tar stream of one shard, read forward only, as `tarfile.TarFile` reads a file.

    A seekable uncompressed file is read and skipped in place (holes and unread members cost nothing). A
    compressed one (gzip, bzip2, xz, told from its first bytes) is decompressed at most `_CHUNK` bytes at a
    time however far a block expands, and skipped by decompressing and dropping. `short` turns True when a
    read got fewer bytes than it asked for: the bytes, or the compressed stream, ended early. Reads by
    `tarfile` itself (headers) are refused above `_MAX_HEADER_BYTES`; member data is read by `data()`.
    """

    def __init__(self, raw, *, allow_compressed: bool = True):
        self.raw, self.pos, self.short, self._data_read = raw, 0, False, False
        head = raw.read(10)
        self.make = next((make for magic, make in _COMPRESSED if magic.match(head)), None)
        if self.make is not None and not allow_compressed:
            raise tarfile.ReadError("compressed, not a plain tar: name it .tar.gz (.tar.bz2, .tar.xz) to "
                                    "read it in order")
        try:
            self.seekable = self.make is None and raw.seekable()
        except (AttributeError, OSError):
            self.seekable = False
        if self.seekable:
            raw.seek(0)
            head = b""
        self.head = head  # bytes taken from `raw` but not yet given out (plain) or decompressed
        self.dec = self.make() if self.make is not None else None
        self.pending = False  # the decompressor may hold output for input it already has

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.pos:
            raise tarfile.StreamError("a shard is read forward only")
        if self.seekable:
            self.raw.seek(pos)
            self.pos = pos
            return pos
        while self.pos < pos:  # skip: read and drop, a chunk at a time
            if not self._read(min(pos - self.pos, _CHUNK)):
                break
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or (n > _MAX_HEADER_BYTES and not self._data_read):
            raise tarfile.HeaderError(f"a tar header claims {n} bytes of metadata")
        return self._read(n)

    def data(self, offset: int, size: int, name: str) -> bytes:
        """Member `name`'s data: `size` bytes at `offset`, or `_Cut`."""
        self.seek(offset)
        self._data_read = True
        try:
            data = self._read(size)
        finally:
            self._data_read = False
        if len(data) < size:
            raise _Cut(f"the shard ends inside {name}, at byte {self.pos}")
        return data

    def _read(self, n: int) -> bytes:
        if n <= 0:
            return b""
        if self.seekable:
            data = self.raw.read(n)
        else:
            pieces, want = [], n
            while want > 0:
                piece = self._some(want)
                if not piece:
                    break
                pieces.append(piece)
                want -= len(piece)
            data = b"".join(pieces)
        self.pos += len(data)
        if len(data) < n:
            self.short = True
        return data

    def verify_rest(self) -> None:
        """After the tar's end: decompress what follows (end padding, up to `_VERIFY_BYTES`) so the codec
        checks its trailer (gzip's CRC-32): damage anywhere in the stream is then found, not only before the
        end blocks. A stream cut after the tar's end loses nothing, and is not an error."""
        left = _VERIFY_BYTES
        while self.dec is not None and left > 0:
            piece = self._some(min(left, _CHUNK))
            if not piece:
                break
            left -= len(piece)

    def _some(self, n: int) -> bytes:
        """Up to `n` more bytes of the tar stream; b"" at its end."""
        if self.dec is None and self.make is None:  # plain, not seekable
            if self.head:
                out, self.head = self.head[:n], self.head[n:]
                return out
            return self.raw.read(n)
        while self.dec is not None:
            if self.dec.eof:
                self._next_stream()
                continue
            data, self.head = self.head, b""
            if not data and not self.pending and getattr(self.dec, "needs_input", True):
                data = self.raw.read(_COMPRESSED_CHUNK)
                if not data:
                    return b""  # the compressed stream stops before its end
            out = self.dec.decompress(data, n)  # never more than n bytes, whatever the ratio
            self.head = getattr(self.dec, "unconsumed_tail", b"")  # zlib hands back what it did not take
            self.pending = len(out) == n
            if out:
                return out
        return b""

    def _next_stream(self) -> None:
        """After one compressed stream: the next one when another follows (multi-member gzip), else the end
        (trailing zeros or other bytes after the last stream are not tar data)."""
        rest = self.dec.unused_data + self.head
        while len(rest) < 10:
            more = self.raw.read(_CHUNK)
            if not more:
                break
            rest += more
        if any(magic.match(rest) for magic, make in _COMPRESSED if make is self.make):
            self.dec, self.head, self.pending = self.make(), rest, False
        else:
            self.dec, self.head = None, b""


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


class _Refused(NamedTuple):
    name: str
    size: int
    cap: int


def _is_file(m: tarfile.TarInfo) -> bool:
    return m.type in _FILE_TYPES and m.sparse is None


def _ending(error, stops: list, stream: _TarBytes | None) -> tuple[str, str] | None:
    """How a shard's walk ended: None for a proper end, else (reason, what happened)."""
    last = stops[-1] if stops else None
    at = f"at byte {stream.pos}" if stream is not None else "at its start"
    cut = (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)
    if error is None and (last is None or isinstance(last, tarfile.EOFHeaderError)):
        return None
    if isinstance(error, _Cut):
        return "shard_truncated", str(error)
    if (stream is not None and stream.short) or any(isinstance(s, cut) for s in stops):
        return "shard_truncated", f"the shard ends early, {at}"
    if isinstance(error, OSError) and not isinstance(error, tarfile.TarError):  # I/O, a failed `pipe:`
        return "unreadable", f"{at}: {error.strerror or error}"
    what = error if error is not None else last
    return "bad_record", f"damaged {at}: {str(what) or 'unreadable'}"


def _walk(raw, take: Callable, caps: Callable, url: str, found: SkipCounter, *,
          allow_compressed: bool = True) -> Iterator[tuple[str, dict]]:
    """(key, {ext: take(stream, member)}) for every sample of the shard open as `raw`, in tar order.

    `caps(ext, group)` is the byte cap of a member a reader uses, None for one it does not (never taken); a
    member over its cap is a `_Refused` in the group. Non-regular members are counted in `found` and never
    taken; the shard's ending is counted there once. A sample whose member was cut is not yielded.
    """
    stops: list = []
    key, group, spoiled, error, stream = None, {}, False, None, None
    try:
        stream = _TarBytes(raw, allow_compressed=allow_compressed)
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
                    group[ext] = _Refused(m.name, m.size, cap) if m.size > cap else take(stream, m)
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


@dataclass
class WdsSample(Sample):
    """A sample of an indexed shard: its image stays in the shard until asked for."""

    member: tuple[str, int, int] | None = field(default=None, repr=False)  # (shard path, offset, size)

    def image_bytes(self) -> bytes:
        if self.data is not None or self.member is None:
            return super().image_bytes()
        url, offset, size = self.member
        try:
            with open(url, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as e:
            raise BadSample("unreadable", f"{url}: {e.strerror or e}") from None
        if len(data) != size:
            raise BadSample("unreadable", f"{url}: the shard is shorter than when it was indexed")
        return data


class WdsSource(Source):
    """`max_image_bytes` / `max_text_bytes`: the most one image / one `.txt`, `.json` or `.cls` member may
    hold; a sample with a larger one is skipped as `member_too_large` without it being read."""

    kind = "wds"

    def __init__(self, pattern: str, *, spec: str | None = None, classnames: list[str] | None = None,
                 max_image_bytes: int = DEFAULT_MAX_FILE_BYTES, max_text_bytes: int = MAX_SIDECAR_BYTES, **kw):
        super().__init__(spec or f"wds:{pattern}", **kw)
        self.max_image_bytes = check_byte_cap(max_image_bytes, "max_image_bytes", allow_none=False)
        self.max_text_bytes = check_byte_cap(max_text_bytes, "max_text_bytes", allow_none=False)
        self.pattern = pattern
        self.urls = expand_shards(pattern)
        # a `pipe:` shard runs a shell command: refused (before any shard is read) when the spec was read from a
        # stored file and the user did not accept it (clipforge.data.sources.trust)
        check_commands(self.urls, spec, pattern)
        self._stored = next((s for s in (spec, pattern) if is_stored(s)), None)
        local = [u for u in self.urls if _is_local(u)]
        missing = [u for u in local if not is_file(u)]
        if missing:
            raise ClipforgeError(f"{len(missing)} of {len(self.urls)} shards do not exist or are not files, "
                                 f"e.g. {missing[:3]}")
        self.random_access = len(local) == len(self.urls) and all(u.endswith(".tar") for u in self.urls)
        self._index: list[tuple[str, str, dict]] | None = None  # (url, key, {ext: (offset, size)})
        self.classnames = list(classnames) if classnames else self._find_classnames()

    def _find_classnames(self) -> list[str] | None:
        if not _is_local(self.urls[0]):
            return None
        path = os.path.join(os.path.dirname(self.urls[0]), "classnames.txt")
        if not is_file(path):
            return None
        try:
            text = read_text(path, MAX_SIDECAR_BYTES, "classnames.txt")
        except FileRefused as e:
            raise ClipforgeError(f"cannot read class names: {e.detail}") from None
        return [ln.strip() for ln in text.splitlines() if ln.strip()]

    def _cap(self, ext: str, group: dict) -> int | None:
        """The byte cap of a member this reader uses, None for one it never reads."""
        if ext in TEXT_EXTS:
            return self.max_text_bytes
        if _is_image_ext(ext) and image_key(group) is None:  # the sample's first image
            return self.max_image_bytes
        return None

    def _refused(self, key: str, group: dict, counter: SkipCounter) -> bool:
        if any(isinstance(v, _Refused) for v in group.values()):
            counter.add(key, "member_too_large")
            return True
        return False

    # --- sample construction shared by the streaming and the indexed path ---------------------------------
    def _make(self, key: str, url: str, files: dict[str, bytes], image: tuple | None = None) -> Sample:
        meta: dict = {"__key__": key, "__url__": url}
        captions: list[str] = []
        label = None
        sid = key
        if "json" in files:
            try:
                user = parse_json(files["json"])
            except ValueError as e:
                meta["meta_error"] = f"{key}.json: {e}"
                user = None
            if isinstance(user, dict):
                captions = captions_from_meta(user)
                if isinstance(user.get("id"), str) and user["id"]:
                    sid = user["id"]
                if isinstance(user.get("label"), int):
                    label = as_label(user["label"])
                meta.update({k: v for k, v in user.items() if k not in ("caption", "captions", "label", "id")})
        if "txt" in files and not captions:
            captions = split_captions(files["txt"].decode("utf-8", errors="replace"))
        if "cls" in files:
            try:
                label = int(files["cls"].decode("utf-8").strip())
            except ValueError:  # not digits, not UTF-8, or more digits than Python converts
                label = None
            if as_label(label) is None:
                label = None
                meta["meta_error"] = f"{key}.cls is not an integer label"
        captions = self._cap_captions(sid, captions)
        ext = image_key(files) if image is None else image[0]
        data = files.get(ext) if ext and image is None else None
        # no image: the record is kept and counted as no_image when read
        return WdsSample(id=sid, captions=captions, label=label, meta=meta, data=data, ext=ext,
                         decode_options=self.decode_options, member=None if image is None else image[1])

    # --- reading in order -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Sample]:
        if self.random_access:  # through the index, so a pass and indexed access agree
            len(self)
            for entry in self._index:
                try:
                    yield self._read(entry)
                except BadSample as e:
                    self.skipped.add(entry[1], e.reason)
            return
        for url in self.urls:
            yield from self._stream(url)

    def _stream(self, url: str) -> Iterator[Sample]:
        """The samples of one shard read in order (compressed or remote); what is wrong goes to `skipped`."""
        try:
            raw = open(url, "rb") if _is_local(url) else _open_remote(url, self._stored)
        except OSError as e:
            self.skipped.add(f"{url}: {e.strerror or e}", "unreadable")
            return
        try:
            groups = _walk(raw, lambda stream, m: stream.data(m.offset_data, m.size, m.name), self._cap, url,
                           self.skipped)
            for key, files in groups:
                if not self._refused(key, files, self.skipped):
                    yield self._make(key, url, files)
        finally:
            try:
                raw.close()
            except OSError as e:  # a `pipe:` command that failed says so when closed (unless its read did)
                if not (self.skipped.samples and self.skipped.samples[-1][0].startswith(f"{url}: ")):
                    self.skipped.add(f"{url}: {e.strerror or e}", "unreadable")

    # --- map-style (local shards) -----------------------------------------------------------------------
    def _build_index(self) -> list:
        found = SkipCounter()
        index = []
        for url in self.urls:
            try:
                raw = open(url, "rb")
            except OSError as e:
                found.add(f"{url}: {e.strerror or e}", "unreadable")
                continue
            with raw:
                size = os.fstat(raw.fileno()).st_size

                def where(stream, m, size=size):  # checked from the header, nothing read
                    if m.offset_data + m.size > size:
                        raise _Cut(f"the shard ends inside {m.name}, at byte {size}")
                    return m.offset_data, m.size

                for key, group in _walk(raw, where, self._cap, url, found, allow_compressed=False):
                    if not self._refused(key, group, found):
                        index.append((url, key, group))
        self.open_skipped.merge(found)
        self.skipped.merge(found)
        return index

    def __len__(self) -> int:
        if not self.random_access:
            raise StreamingOnly(f"{self.spec}: compressed or remote shards can only be read in order; random "
                                "access (training, shuffling, indexed reads) needs local uncompressed .tar "
                                "shards: decompress them (gunzip) or write them again with `data convert`")
        if self._index is None:
            self._index = self._build_index()
        return len(self._index)

    def _get(self, index: int) -> Sample:
        return self._read(self._index[index])

    def locate(self, positions) -> list[tuple[str | None, list[int], list[int]]]:
        """Positions grouped by tar shard, each as `wds:SHARD` and the positions within it (a shard's index
        is the same read alone or with the others), so a worker scans the headers of its shards only."""
        if not self.random_access or len(self.urls) == 1:
            return super().locate(positions)
        len(self)  # the index
        first: dict[str, int] = {}
        for i, (url, _, _) in enumerate(self._index):
            first.setdefault(url, i)
        groups: dict[str, tuple[list[int], list[int]]] = {}
        for p in positions:
            url = self._index[int(p)][0]
            g = groups.setdefault(url, ([], []))
            g[0].append(int(p))
            g[1].append(int(p) - first[url])
        return [(f"wds:{url}", glob, loc) for url, (glob, loc) in groups.items()]

    def _read(self, entry) -> Sample:
        """An indexed sample: its text members read now (each under `max_text_bytes`), its image later."""
        url, key, members = entry
        image = image_key(members)
        files = {}
        try:
            with open(url, "rb") as f:
                for ext, (offset, size) in members.items():
                    if ext == image:
                        continue
                    f.seek(offset)
                    files[ext] = f.read(size)
        except OSError as e:
            raise BadSample("unreadable", f"{url}: {e.strerror or e}") from None
        return self._make(key, url, files, image=(image, (url, *members[image])) if image else None)


def _open_remote(url: str, stored_spec=None):
    """A remote or `pipe:` shard, open for reading. `stored_spec`: the stored spec it came from, if any (its
    commands are refused here too, where the command would start)."""
    import webdataset

    check_commands([url], stored_spec)

    try:
        return webdataset.gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 - gopen raises what its transport raises
        raise OSError(str(e)) from None
