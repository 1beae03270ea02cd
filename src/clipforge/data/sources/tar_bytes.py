"""One shard's tar stream, read forward only with memory bounded whatever its bytes claim.

A compressed shard (gzip, bzip2, xz, told from its first bytes) is decompressed at most `CHUNK` bytes at a
time; after a compressed tar's end the stream is read on to the codec's checksum (up to `VERIFY_BYTES`), so
corruption before the end blocks is found too. No read of tar metadata (a pax or GNU long-name header) may
exceed `MAX_HEADER_BYTES`.
"""
from __future__ import annotations

import bz2
import lzma
import re
import tarfile
import zlib

CHUNK = 1 << 20  # the most a compressed shard is decompressed at a time
_COMPRESSED_CHUNK = 1 << 16  # compressed bytes fed at a time (zlib copies what it leaves over on each call)
VERIFY_BYTES = 16 << 20  # decompressed after a compressed tar's end, to reach the codec's checksum
MAX_HEADER_BYTES = 1 << 20  # a pax / GNU long-name header claiming more is a damaged shard, not read
_COMPRESSED = ((re.compile(rb"\x1f\x8b\x08"), lambda: zlib.decompressobj(31)),  # gzip
               (re.compile(rb"BZh[1-9]1AY&SY"), bz2.BZ2Decompressor),
               (re.compile(rb"\xfd7zXZ\x00"), lzma.LZMADecompressor))


class Cut(Exception):
    """The shard's bytes end inside a member."""


class TarBytes:
    """The tar stream of one shard, read forward only, as `tarfile.TarFile` reads a file.

    A seekable uncompressed file is read and skipped in place (holes and unread members cost nothing). A
    compressed one (gzip, bzip2, xz, told from its first bytes) is decompressed at most `CHUNK` bytes at a
    time however far a block expands, and skipped by decompressing and dropping. `short` turns True when a
    read got fewer bytes than it asked for: the bytes, or the compressed stream, ended early. Reads by
    `tarfile` itself (headers) are refused above `MAX_HEADER_BYTES`; member data is read by `data()`.
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
            if not self._read(min(pos - self.pos, CHUNK)):
                break
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or (n > MAX_HEADER_BYTES and not self._data_read):
            raise tarfile.HeaderError(f"a tar header claims {n} bytes of metadata")
        return self._read(n)

    def data(self, offset: int, size: int, name: str) -> bytes:
        """Member `name`'s data: `size` bytes at `offset`, or `Cut`."""
        self.seek(offset)
        self._data_read = True
        try:
            data = self._read(size)
        finally:
            self._data_read = False
        if len(data) < size:
            raise Cut(f"the shard ends inside {name}, at byte {self.pos}")
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
        """After the tar's end: decompress what follows (end padding, up to `VERIFY_BYTES`) so the codec
        checks its trailer (gzip's CRC-32): damage anywhere in the stream is then found, not only before the
        end blocks. A stream cut after the tar's end loses nothing, and is not an error."""
        left = VERIFY_BYTES
        while self.dec is not None and left > 0:
            piece = self._some(min(left, CHUNK))
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
            more = self.raw.read(CHUNK)
            if not more:
                break
            rest += more
        if any(magic.match(rest) for magic, make in _COMPRESSED if make is self.make):
            self.dec, self.head, self.pending = self.make(), rest, False
        else:
            self.dec, self.head = None, b""
