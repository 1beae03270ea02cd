"""Hostile files, made on demand under a test's tmp_path: everything a user's folder, manifest or shard may
hold under an image's name that is not a good image file. The suite never depends on files made by hand.

`make_hostile_folder(root)` returns {relative name: expected skip reason, or None for an image that must be
read}; the same names are what `data check files:ROOT`, `index build` and `train` must report. Kinds the
platform cannot make (a socket path over the length limit, unprivileged device nodes) are left out, not
faked. `make_hostile_manifest` and `make_hostile_shard` cover the other readers.

Reliability cases (each returns what it made and what a reader must report): `write_tar` builds tar shards
byte by byte — members whose header claims far more data than the file holds on disk (holes: sparse files),
non-regular members, a cut anywhere, gzip-compressed; `make_big_member_shard` (a 1 GiB image and caption in a
tiny sparse tar, or a ~6 MB .tar.gz of six), `make_nonregular_shard`, `make_cut_shards`,
`make_huge_header_shards` (pax / GNU long-name headers claiming 1 GiB), `make_huge_caption_sources` (with
`huge_caption`), `make_bad_text_manifests` (a NUL byte, invalid UTF-8, a number too long to convert) and
`make_long_line_manifests` (a 100 MiB line). The `fuzz_input_*` functions write the same cases, named
TARGET__what, for the fuzz harness's memory child (tests/test_fuzz_readers.py).
"""
from __future__ import annotations

import io
import json
import os
import socket
import stat
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data_fixtures import bomb_png, encode, pattern

HUGE_BYTES = 600 * 2**20  # over clipforge's per-file cap; made sparse, so it costs no disk or memory
GIB = 2**30


def _good(seed: int, fmt: str = "PNG", size=(24, 16)) -> bytes:
    return encode(Image.fromarray(pattern(*size, seed)), fmt)


def _bad_exif_jpeg() -> bytes:
    """A JPEG whose EXIF orientation is out of range and whose IFD points past the end: must still decode."""
    img = Image.fromarray(pattern(20, 12, 3))
    exif = img.getexif()
    exif[0x0112] = 99  # orientation has values 1..8
    data = encode(img, "JPEG", quality=90, exif=exif)
    i = data.find(b"Exif\x00\x00")
    if i > 0:  # corrupt the first IFD offset (TIFF header bytes 4..8) to point far away
        j = i + 6 + 4
        data = data[:j] + b"\x7f\xff\xff\xf0" + data[j + 4:]
    return data


def make_hostile_folder(root: str) -> dict[str, str | None]:
    os.makedirs(root, exist_ok=True)
    expect: dict[str, str | None] = {}

    def write(name: str | bytes, data: bytes, reason: str | None) -> None:
        path = os.path.join(os.fsencode(root), os.fsencode(name))
        with open(path, "wb") as f:
            f.write(data)
        expect[os.fsdecode(name)] = reason

    # good images the hostile ones sit beside (with awkward names: spaces, unicode, a leading dash)
    write("good one.png", _good(1), None)
    write("ünïcødé.png", _good(2), None)
    write("-rf.png", _good(3), None)
    write("bad_exif.jpg", _bad_exif_jpeg(), None)
    # odd names a terminal or a JSON writer could trip on: a newline, an escape sequence, non-UTF-8 bytes
    write("new\nline.png", _good(4), None)
    write("esc\x1b[31mred.png", _good(5), None)
    write(b"latin1-\xe9t\xe9.png", _good(6), None)
    write("x" * 200 + ".png", _good(7), None)  # long, within the 255-byte name limit
    # files that are images by name only
    write("bomb.png", bomb_png(), "too_large")
    jpg = encode(Image.fromarray(pattern(64, 64, 8)), "JPEG", quality=90)
    write("truncated.jpg", jpg[: len(jpg) // 2], "truncated")
    write("fake.jpg", b"<html>not an image</html>\n", "not_an_image")
    write("empty.png", b"", "empty_file")
    huge = os.path.join(root, "huge.png")
    with open(huge, "wb") as f:  # sparse: a PNG header, then a hole up to HUGE_BYTES
        f.write(_good(9)[:64])
        f.truncate(HUGE_BYTES)
    expect["huge.png"] = "too_large"
    # things that are not regular files at all
    os.symlink("loop_b.jpg", os.path.join(root, "loop_a.jpg"))
    os.symlink("loop_a.jpg", os.path.join(root, "loop_b.jpg"))
    expect["loop_a.jpg"] = expect["loop_b.jpg"] = "unreadable"
    os.symlink("does-not-exist.png", os.path.join(root, "dangling.png"))
    expect["dangling.png"] = "missing_file"
    os.mkfifo(os.path.join(root, "fifo.jpg"))
    expect["fifo.jpg"] = "not_a_file"
    os.symlink("/dev/zero", os.path.join(root, "zero.jpg"))  # reads forever without the regular-file check
    os.symlink("/dev/null", os.path.join(root, "null.png"))
    expect["zero.jpg"] = expect["null.png"] = "not_a_file"
    sock_path = os.path.join(root, "sock.png")
    if len(os.fsencode(sock_path)) < 100:  # AF_UNIX paths are limited to ~108 bytes
        s = socket.socket(socket.AF_UNIX)
        s.bind(sock_path)
        s.close()  # the socket file stays
        expect["sock.png"] = "not_a_file"
    # a link to its own folder under an image's name: walkers do not follow it (no endless descent), and as a
    # folder it is not a sample
    os.symlink(os.path.abspath(root), os.path.join(root, "self.png"))
    locked = os.path.join(root, "locked.png")
    with open(locked, "wb") as f:
        f.write(_good(10))
    os.chmod(locked, 0)
    expect["locked.png"] = None if os.access(locked, os.R_OK) else "unreadable"  # root reads anything
    # sidecars that must not hang or sink the image they describe
    write("fifo_caption.png", _good(11), None)
    os.mkfifo(os.path.join(root, "fifo_caption.txt"))
    write("deep_json.png", _good(12), None)
    with open(os.path.join(root, "deep_json.json"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    write("long_int.png", _good(13), None)
    with open(os.path.join(root, "long_int.json"), "w") as f:
        f.write('{"label": ' + "7" * 5000 + ', "caption": "digits"}')
    write("inf_label.png", _good(14), None)
    with open(os.path.join(root, "inf_label.json"), "w") as f:
        f.write('{"label": 1e400, "caption": "an infinite label"}')
    write("huge_json.png", _good(15), None)
    with open(os.path.join(root, "huge_json.json"), "wb") as f:
        f.write(b'{"caption": "' + b"a" * (5 * 2**20) + b'"}')
    write("surrogate.png", _good(16), None)
    with open(os.path.join(root, "surrogate.json"), "w") as f:
        f.write('{"caption": "lone \\ud800 surrogate"}')
    with open(os.path.join(root, "good one.txt"), "w") as f:
        f.write("a good image with a caption\n")
    return expect


def make_hostile_manifest(root: str) -> tuple[str, dict[str, str | None]]:
    """A JSONL manifest whose rows name hostile paths; returns (path, {row id: expected reason})."""
    folder = os.path.join(root, "imgs")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "ok.png"), "wb") as f:
        f.write(_good(20))
    os.mkfifo(os.path.join(folder, "fifo.png"))
    rows = [
        ({"id": "ok", "image": "imgs/ok.png", "caption": "fine"}, None),
        ({"id": "nul", "image": "imgs/a\x00b.png", "caption": "a NUL byte in the path"}, "unreadable"),
        ({"id": "fifo", "image": "imgs/fifo.png", "caption": "a FIFO"}, "not_a_file"),
        ({"id": "dev", "image": "/dev/zero", "caption": "a device"}, "not_a_file"),
        ({"id": "dir", "image": "imgs", "caption": "a folder"}, "not_a_file"),
        ({"id": "gone", "image": "imgs/nope.png", "caption": "missing"}, "missing_file"),
        ({"id": "surrogate", "image": "imgs/ok.png", "caption": "lone \ud800"}, None),
    ]
    path = os.path.join(root, "hostile.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for row, _ in rows:
            f.write(json.dumps(row) + "\n")  # json escapes the NUL and the lone surrogate
        f.write('{"id": "deep", "image": "imgs/ok.png", "caption": ' + "[" * 50_000 + "]" * 50_000 + "}\n")
        f.write('{"id": "big", "image": "imgs/ok.png", "label": ' + "9" * 5000 + "}\n")
        f.write('{"id": "int64", "image": "imgs/ok.png", "label": ' + str(2**70) + "}\n")
    expect = {row["id"]: reason for row, reason in rows}
    return path, expect  # the last three rows are unparseable or have bad labels: counted as bad_record


def make_hostile_shard(root: str) -> str:
    """A tar shard with a good sample, and members that are a symlink, a FIFO, a device, a path escaping the
    shard and a record without an image: the reader takes regular members only."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "hostile.tar")
    with tarfile.open(path, "w") as tf:
        def add(name: str, data: bytes = b"", kind=tarfile.REGTYPE, **kw):
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode = kind, len(data) if kind == tarfile.REGTYPE else 0, 0o644
            for k, v in kw.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("0001.png", _good(30))
        add("0001.txt", b"a good sample")
        add("0002.png", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
        add("0003.png", kind=tarfile.FIFOTYPE)
        add("0004.png", kind=tarfile.CHRTYPE, devmajor=1, devminor=5)
        add("../../escape.png", _good(31))
        add("0005.json", b'{"caption": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
        add("0006.png", _good(32))
        add("0006.json", b'{"label": ' + str(2**70).encode() + b', "caption": "big label"}')
    return path


# --- tar shards made byte by byte ---------------------------------------------------------------------------

def member(name: str, data: bytes = b"", size: int | None = None, kind: bytes = tarfile.REGTYPE, **attrs) -> dict:
    """One tar member for `write_tar`: `size` (default len(data)) is what the header claims; the data past
    `data` are zeros, written as a hole (plain tar) or as compressed zeros (gzip)."""
    regular = kind in (tarfile.REGTYPE, tarfile.AREGTYPE) or kind not in tarfile.SUPPORTED_TYPES  # data follows
    return {"name": name, "data": data, "size": (len(data) if size is None else size) if regular else 0,
            "kind": kind, "attrs": attrs}


class _Out:
    """Where `write_tar` writes: a plain file (zeros are holes) or a gzip stream.

    gzip is written as its parts (header, raw deflate, CRC-32 and length) so that runs of zeros cost next to
    nothing: after a full flush the deflate stream takes the same ~1 KB block for every MiB of zeros, written
    as it is, and the CRC of those zeros is advanced by `_zero_mib_crc` instead of being computed over them.
    """

    def __init__(self, path: str, gzip_level: int | None):
        self.f = open(path, "wb")
        self.level = gzip_level
        self.z = zlib.compressobj(gzip_level, zlib.DEFLATED, -15) if gzip_level is not None else None
        self.pos = 0
        self.crc = 0
        if self.z is not None:
            self.f.write(b"\x1f\x8b\x08\x00" + (1_700_000_000).to_bytes(4, "little") + b"\x02\xff")

    def write(self, data: bytes) -> None:
        if self.z is not None:
            self.f.write(self.z.compress(data))
            self.crc = zlib.crc32(data, self.crc)
        else:
            self.f.write(data)
        self.pos += len(data)

    def zeros(self, n: int) -> None:
        if self.z is None:
            self.f.seek(n, os.SEEK_CUR)  # a hole: no disk, no memory
            self.pos += n
            return
        mibs, rest = divmod(n, _MIB)
        if mibs:
            self.f.write(self.z.flush(zlib.Z_FULL_FLUSH))  # nothing after this refers back before it
            block = _zero_mib_deflate(self.level)
            for _ in range(mibs):
                self.f.write(block)
                self.crc = _zero_mib_crc(self.crc)
            self.pos += mibs * _MIB
        if rest:
            self.write(bytes(rest))

    def close(self) -> None:
        if self.z is not None:
            self.f.write(self.z.flush())
            self.f.write(self.crc.to_bytes(4, "little") + (self.pos & 0xFFFFFFFF).to_bytes(4, "little"))
        self.f.truncate()  # a plain tar that ends in a hole gets its full size
        self.f.close()


_MIB = 1 << 20
_ZERO_BLOCKS: dict[int, bytes] = {}
_ZERO_CRC: list = []


def _zero_mib_deflate(level: int) -> bytes:
    """A MiB of zeros as raw deflate blocks that stand alone (they start and end at a full flush)."""
    if level not in _ZERO_BLOCKS:
        z = zlib.compressobj(level, zlib.DEFLATED, -15)
        _ZERO_BLOCKS[level] = z.compress(bytes(_MIB)) + z.flush(zlib.Z_FULL_FLUSH)
    return _ZERO_BLOCKS[level]


def _zero_mib_crc(crc: int) -> int:
    """zlib.crc32(bytes(2**20), crc) without reading a MiB: the CRC of appended zeros is affine in `crc`,
    f(c) = f(0) ^ XOR of (f(2**i) ^ f(0)) over the bits i of c, so 33 CRCs made once give every f(c)."""
    if not _ZERO_CRC:
        mib = bytes(_MIB)
        f0 = zlib.crc32(mib, 0)
        _ZERO_CRC.extend([f0, [zlib.crc32(mib, 1 << i) ^ f0 for i in range(32)]])
    f0, basis = _ZERO_CRC
    out = f0
    for i in range(32):
        if crc >> i & 1:
            out ^= basis[i]
    return out


def write_tar(path: str, members: list[dict], *, end: bool = True, cut: int | None = None,
              gzip_level: int | None = None) -> str:
    """Write `members` as a tar (gzip-compressed when `gzip_level` is given). `end=False` leaves out the two
    zero blocks that end an archive; `cut` stops the tar stream after that many bytes (the gzip stream itself
    is still finished properly, so only the tar inside it is cut)."""
    out = _Out(path, gzip_level)
    blocks = []
    for m in members:
        info = tarfile.TarInfo(m["name"])
        info.type, info.size, info.mode, info.mtime = m["kind"], m["size"], 0o644, 1_700_000_000
        for k, v in m["attrs"].items():
            setattr(info, k, v)
        blocks.append((info.tobuf(tarfile.PAX_FORMAT), m["data"][: m["size"]], m["size"]))
    if end:
        blocks.append((bytes(2 * tarfile.BLOCKSIZE), b"", 0))
    for header, data, size in blocks:
        for piece, n in ((header, None), (data, None), (None, size - len(data) + (-size % tarfile.BLOCKSIZE))):
            left = None if cut is None else cut - out.pos
            if left is not None and left <= 0:
                break
            if piece is None:
                out.zeros(n if left is None else min(n, left))
            else:
                out.write(piece if left is None else piece[:left])
    out.close()
    return path


def _png_head(seed: int) -> bytes:
    return _good(seed)[:64]  # a PNG signature and header, then (in the shard) zeros


BIG_SAMPLES = ("0002", "0003", "0004", "0005", "0007")


def make_big_member_shard(root: str, member_bytes: int = GIB, gzip: bool = False, big=BIG_SAMPLES,
                          name: str | None = None) -> tuple[str, dict[str, str | None]]:
    """Good samples around ones whose headers claim `member_bytes`: 0002 an image, 0003 a caption (.txt),
    0004 a .json, 0005 a member no reader uses (.npy), 0007 an image and a caption (the issue's example).
    `big` picks which of those are written.

    Plain: a sparse file (~40 KB on disk whatever `member_bytes` is). gzip: the zeros compressed (1 GiB is
    ~1 MB and ~3 s to make). Returns (path, {sample id: expected skip reason, None when it must be read}).
    """
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, name or ("big.tar.gz" if gzip else "big.tar"))
    n = member_bytes
    parts = {
        "0001": ([member("0001.png", _good(40)), member("0001.txt", b"a good sample before")], None),
        "0002": ([member("0002.png", _png_head(41), size=n), member("0002.txt", b"huge image")], "member_too_large"),
        "0003": ([member("0003.png", _good(42)), member("0003.txt", b"huge caption", size=n)], "member_too_large"),
        "0004": ([member("0004.png", _good(43)), member("0004.json", b'{"caption": "', size=n)], "member_too_large"),
        "0005": ([member("0005.png", _good(44)), member("0005.npy", b"\x93NUMPY", size=n)], None),  # never read
        "0006": ([member("0006.png", _good(45)), member("0006.txt", b"a good sample between")], None),
        "0007": ([member("0007.png", _png_head(46), size=n), member("0007.txt", b"x", size=n)], "member_too_large"),
        "0008": ([member("0008.png", _good(47)), member("0008.txt", b"a good sample after")], None),
    }
    keep = [k for k in parts if k in big or k not in BIG_SAMPLES]
    write_tar(path, [m for k in keep for m in parts[k][0]], gzip_level=9 if gzip else None)
    return path, {k: parts[k][1] for k in keep}


def make_nonregular_shard(root: str, gzip: bool = False) -> tuple[str, dict[str, str | None], int]:
    """Good samples between a symlink, a hard link, a character and a block device, a FIFO, a member of an
    unknown type and a directory. Returns (path, {sample id: expected reason}, number of non-regular members
    other than the directory)."""
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "nonregular.tar.gz" if gzip else "nonregular.tar")
    members = [
        member("d", kind=tarfile.DIRTYPE),
        member("d/0001.png", _good(50)), member("d/0001.txt", b"first"),
        member("d/0002.png", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
        member("d/0003.png", kind=tarfile.LNKTYPE, linkname="d/0001.png"),
        member("d/0004.png", kind=tarfile.CHRTYPE, devmajor=1, devminor=5),
        member("d/0005.png", kind=tarfile.BLKTYPE, devmajor=7, devminor=0),
        member("d/0006.png", kind=tarfile.FIFOTYPE),
        member("d/0006u.png", b"\x89PNG\r\n\x1a\n" + bytes(1500), kind=b"Z"),  # unknown type; data to skip
        member("d/0007.png", _good(51)), member("d/0007.txt", b"beside a link", ),
        member("d/0007.cls", kind=tarfile.SYMTYPE, linkname="/dev/zero"),  # a link inside a good sample
        member("d/0008.png", _good(52)),
    ]
    write_tar(path, members, gzip_level=9 if gzip else None)
    return path, {"d/0001": None, "d/0007": None, "d/0008": None}, 7


def make_cut_shards(root: str) -> dict[str, tuple[str, list[str], str]]:
    """Shards of samples 0001..0004 cut in different places: {case: (path, ids that must be read, reason
    counted once for the shard)}. Cuts inside a header, inside member data and right after a member (no end
    blocks), plain and gzip-compressed, and a gzip stream that itself stops early."""
    os.makedirs(root, exist_ok=True)
    members = []
    for i in range(1, 5):
        members += [member(f"{i:04d}.png", _good(60 + i)), member(f"{i:04d}.txt", f"sample {i}".encode())]
    full = write_tar(os.path.join(root, "full.tar"), members)
    with tarfile.open(full) as tf:
        third = tf.getmember("0003.png")
        fourth = tf.getmember("0004.png")
    cases = {}
    for gz in (False, True):
        suffix, level = (".tar.gz", 9) if gz else (".tar", None)
        for case, cut, end, ids in (("header", third.offset + 200, True, ["0001", "0002"]),
                                    ("data", third.offset_data + 10, True, ["0001", "0002"]),
                                    ("boundary", fourth.offset, False, ["0001", "0002", "0003"])):
            p = write_tar(os.path.join(root, f"cut_{case}{suffix}"), members, end=end, cut=cut, gzip_level=level)
            cases[f"{case}{suffix}"] = (p, ids, "shard_truncated")
    gz_path = os.path.join(root, "full.tar.gz")
    write_tar(gz_path, members, gzip_level=9)
    data = open(gz_path, "rb").read()
    stopped = os.path.join(root, "gzip_stops.tar.gz")
    with open(stopped, "wb") as f:
        f.write(data[: len(data) * 3 // 4])  # the compressed stream ends before its end marker
    cases["gzip_stops"] = (stopped, None, "shard_truncated")  # which samples survive depends on the codec
    return cases


# --- captions and manifests ---------------------------------------------------------------------------------

def huge_caption(n: int) -> str:
    """`n` bytes of UTF-8 (n >= 4098): "é", "a"s, and a 3-byte "€" straddling byte 4096 (the default cap), so
    a cut there must drop that whole character: cut, it is "é" + "a" * 4093 (4095 bytes)."""
    return "é" + "a" * 4093 + "€" + "a" * (n - 4098)


# The longest caption each kind of source gets in `make_huge_caption_sources`: what its reader must read and
# then cut (a longer cell is refused whole, as a bad_record or meta_error, by a cap of its own): the csv module
# refuses cells over 128 KiB, a text manifest's line cap is 64 MiB, a sidecar .txt 4 MiB, a tar text member 4 MiB.
HUGE_CAPTION_CAPS = {"parquet": None, "jsonl": 8 * 2**20, "csv": 100_000, "files": 3 * 2**20, "wds": 3 * 2**20}


def make_huge_caption_sources(root: str, caption_bytes: int = 100 * 2**20) -> dict[str, str]:
    """A huge caption in each kind of source that carries captions: {kind: spec}. Each source holds two
    samples, "big" (the caption `huge_caption(n)`, n = `caption_bytes` or the kind's entry in
    HUGE_CAPTION_CAPS when smaller) and "ok" (caption "short"). Manifests name the image "img.png" beside them."""
    os.makedirs(root, exist_ok=True)
    img = os.path.join(root, "img.png")
    with open(img, "wb") as f:
        f.write(_good(70))
    size = {k: caption_bytes if cap is None else min(caption_bytes, cap) for k, cap in HUGE_CAPTION_CAPS.items()}
    huge = huge_caption(caption_bytes)
    specs = {}
    table = pa.table({"id": ["big", "ok"], "image": ["img.png", "img.png"],
                      "caption": [huge[: size["parquet"]], "short"]})
    pq.write_table(table, os.path.join(root, "m.parquet"))
    specs["parquet"] = "parquet:" + os.path.join(root, "m.parquet")
    with open(os.path.join(root, "m.jsonl"), "w", encoding="utf-8") as f:
        big = {"id": "big", "image": "img.png", "caption": huge[: size["jsonl"]]}
        f.write(json.dumps(big, ensure_ascii=False) + "\n")
        f.write(json.dumps({"id": "ok", "image": "img.png", "caption": "short"}) + "\n")
    specs["jsonl"] = "jsonl:" + os.path.join(root, "m.jsonl")
    csv_cap = huge[: size["csv"]]
    with open(os.path.join(root, "m.csv"), "w", encoding="utf-8") as f:
        f.write(f"id,image,caption\nbig,img.png,{csv_cap}\nok,img.png,short\n")
    specs["csv"] = "csv:" + os.path.join(root, "m.csv")
    files = os.path.join(root, "files")
    os.makedirs(files, exist_ok=True)
    for stem in ("big", "ok"):
        with open(os.path.join(files, stem + ".png"), "wb") as f:
            f.write(_good(71))
    with open(os.path.join(files, "big.txt"), "w", encoding="utf-8") as f:
        f.write(huge[: size["files"]] + "\n")  # under the 4 MiB sidecar cap: read, then cut
    with open(os.path.join(files, "ok.txt"), "w") as f:
        f.write("short\n")
    specs["files"] = "files:" + files
    shard = os.path.join(root, "caps.tar")
    write_tar(shard, [member("big.png", _good(72)), member("big.txt", huge[: size["wds"]].encode()),
                      member("ok.png", _good(73)), member("ok.txt", b"short")])
    specs["wds"] = "wds:" + shard
    return specs


def make_bad_text_manifests(root: str) -> dict[str, tuple[str, list[str], dict[str, str]]]:
    """CSV, TSV and JSONL manifests where single rows hold a NUL byte, invalid UTF-8 or a number too long to
    convert: {fmt: (path, ids that must be read, {"line N": reason} for the rows that must be counted)}."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "img.png"), "wb") as f:
        f.write(_good(80))
    out = {}
    for fmt, sep in (("csv", b","), ("tsv", b"\t")):
        lines = [b"id" + sep + b"image" + sep + b"caption",
                 b"a" + sep + b"img.png" + sep + b"first",
                 b"nul" + sep + b"img.png" + sep + b"a NUL \x00 byte",
                 b"b" + sep + b"img.png" + sep + b"caf\xc3\xa9 \xe2\x80\xa8 line separator kept",
                 b"latin1" + sep + b"img.png" + sep + b"caf\xe9",
                 b"c" + sep + b"img.png" + sep + b"last"]
        path = os.path.join(root, f"m.{fmt}")
        with open(path, "wb") as f:
            f.write(b"\r\n".join(lines) + b"\r\n")
        out[fmt] = (path, ["a", "b", "c"], {"line 3": "bad_record", "line 5": "bad_record"})
    lines = [b'{"id": "a", "image": "img.png", "caption": "first"}',
             b'{"id": "latin1", "image": "img.png", "caption": "caf\xe9"}',
             b'{"id": "b", "image": "img.png", "caption": "raw \xe2\x80\xa8 separator"}',
             b'{"id": "big", "image": "img.png", "label": ' + b"7" * 5000 + b"}",
             b"",
             b'{"id": "noimg", "caption": "no image"}',
             b'{"id": "c", "image": "img.png", "caption": "last"}']
    path = os.path.join(root, "m.jsonl")
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # with a byte-order mark
    out["jsonl"] = (path, ["a", "b", "c"], {"line 2": "bad_record", "line 4": "bad_record", "line 6": "no_image"})
    return out


def make_long_line_manifests(root: str) -> dict[str, tuple[str, list[str], dict[str, str]]]:
    """A JSONL and a CSV manifest with one line of 100 MiB of NUL bytes (a hole: no disk) between good rows:
    over the readers' line cap, so skipped unread. {fmt: (path, ids that must be read, {"line N": reason})}."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "img.png"), "wb") as f:
        f.write(_good(81))
    out = {}
    for fmt, head, first, last, line in (
            ("jsonl", b"", b'{"id": "a", "image": "img.png", "caption": "first"}\n',
             b'{"id": "c", "image": "img.png", "caption": "last"}\n', "line 2"),
            ("csv", b"id,image,caption\n", b"a,img.png,first\n", b"c,img.png,last\n", "line 3")):
        path = os.path.join(root, f"long.{fmt}")
        with open(path, "wb") as f:
            f.write(head + first)
            f.seek(100 * 2**20, os.SEEK_CUR)
            f.write(b"\n" + last)
        out[fmt] = (path, ["a", "c"], {line: "bad_record"})
    return out


# --- inputs for the fuzz harness's memory child (tests/test_fuzz_readers.py) --------------------------------
# Each `fuzz_input_*(d)` writes files named TARGET__what into `d` (TARGET: tar, tar.gz, jsonl, csv, parquet),
# which tests/fuzz_targets.py reads by path with the reader that would meet them. Manifests name their images
# beside them (names without a TARGET__ prefix, so not inputs themselves). Each takes well under 3 s and a few
# MB of disk: big members are holes (plain) or runs of compressed zeros (gzip).

def _as_input(path, d: Path, name: str) -> Path:
    dst = Path(d) / name
    os.replace(path, dst)
    return dst


def fuzz_input_big_members(d: Path) -> list[Path]:
    work = str(Path(d) / "_big")
    plain, _ = make_big_member_shard(work)
    gz, _ = make_big_member_shard(work, gzip=True, big=("0002", "0003"))  # 2 GiB to decompress and drop
    return [_as_input(plain, d, "tar__big_members.tar"), _as_input(gz, d, "tar.gz__big_members.tar.gz")]


def fuzz_input_nonregular_members(d: Path) -> list[Path]:
    work = str(Path(d) / "_nonregular")
    plain, _, _ = make_nonregular_shard(work)
    gz, _, _ = make_nonregular_shard(work, gzip=True)
    return [_as_input(plain, d, "tar__nonregular.tar"), _as_input(gz, d, "tar.gz__nonregular.tar.gz")]


def fuzz_input_cut_shards(d: Path) -> list[Path]:
    made = []
    for case, (path, _, _) in sorted(make_cut_shards(str(Path(d) / "_cut")).items()):
        target = "tar.gz" if path.endswith(".tar.gz") else "tar"
        stem = case.split(".")[0]
        made.append(_as_input(path, d, f"{target}__cut_{stem}.{target}"))
    return made


def make_huge_header_shards(root: str) -> dict[str, str]:
    """Shards whose first header is a pax extended header, or a GNU long name, claiming 1 GiB (a hole, or
    compressed zeros), before a good sample: tarfile would read that metadata whole. {case: path}"""
    os.makedirs(root, exist_ok=True)
    good = [member("0001.png", _good(90)), member("0001.txt", b"after a huge header")]
    out = {}
    for case, kind in (("pax", tarfile.XHDTYPE), ("longname", tarfile.GNUTYPE_LONGNAME)):
        head = member("././@LongLink" if case == "longname" else "pax", b"", size=GIB, kind=kind)
        head["size"] = GIB  # metadata members carry data though tarfile does not call them regular
        out[case] = write_tar(os.path.join(root, f"{case}.tar"), [head] + good)
    head = member("pax", b"", size=GIB, kind=tarfile.XHDTYPE)
    head["size"] = GIB
    out["pax.gz"] = write_tar(os.path.join(root, "pax.tar.gz"), [head] + good, gzip_level=9)
    return out


def fuzz_input_huge_headers(d: Path) -> list[Path]:
    shards = make_huge_header_shards(str(Path(d) / "_headers"))
    return [_as_input(shards["pax"], d, "tar__huge_pax_header.tar"),
            _as_input(shards["longname"], d, "tar__huge_long_name.tar"),
            _as_input(shards["pax.gz"], d, "tar.gz__huge_pax_header.tar.gz")]


def fuzz_input_huge_captions(d: Path) -> list[Path]:
    specs = make_huge_caption_sources(str(d))  # the manifests name d/img.png
    return [_as_input(specs["parquet"].split(":", 1)[1], d, "parquet__huge_caption.parquet"),
            _as_input(specs["jsonl"].split(":", 1)[1], d, "jsonl__huge_caption.jsonl"),
            _as_input(specs["csv"].split(":", 1)[1], d, "csv__huge_caption.csv"),
            _as_input(specs["wds"].split(":", 1)[1], d, "tar__huge_caption.tar")]


def fuzz_input_bad_text(d: Path) -> list[Path]:
    made = make_bad_text_manifests(str(d))
    return [_as_input(made["csv"][0], d, "csv__bad_text.csv"),
            _as_input(made["jsonl"][0], d, "jsonl__bad_text.jsonl")]


def fuzz_input_long_lines(d: Path) -> list[Path]:
    made = make_long_line_manifests(str(d))
    return [_as_input(made["csv"][0], d, "csv__long_line.csv"),
            _as_input(made["jsonl"][0], d, "jsonl__long_line.jsonl")]


def file_kind(path: str) -> str:
    """'fifo', 'socket', 'char', 'link', 'dir', 'file' (for assertions about what the generator made)."""
    st = os.lstat(path)
    for test, name in ((stat.S_ISLNK, "link"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "char"), (stat.S_ISDIR, "dir")):
        if test(st.st_mode):
            return name
    return "file"


__all__ = ["make_hostile_folder", "make_hostile_manifest", "make_hostile_shard", "file_kind", "HUGE_BYTES", "GIB",
           "BIG_SAMPLES", "member", "write_tar", "make_big_member_shard", "make_nonregular_shard", "make_cut_shards",
           "make_huge_caption_sources", "make_bad_text_manifests", "huge_caption", "HUGE_CAPTION_CAPS",
           "make_long_line_manifests", "make_huge_header_shards"]
