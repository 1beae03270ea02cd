"""Hostile files, made on demand under a test's tmp_path: everything a user's folder, manifest or shard may
hold under an image's name that is not a good image file. The suite never depends on files made by hand.

`make_hostile_folder(root)` returns {relative name: expected skip reason, or None for an image that must be
read}; the same names are what `data check files:ROOT`, `index build` and `train` must report. Kinds the
platform cannot make (a socket path over the length limit, unprivileged device nodes) are left out, not
faked. `make_hostile_manifest` and `make_hostile_shard` cover the other readers.
"""
from __future__ import annotations

import io
import json
import os
import socket
import stat
import tarfile

from PIL import Image

from data_fixtures import bomb_png, encode, pattern

HUGE_BYTES = 600 * 2**20  # over clipforge's per-file cap; made sparse, so it costs no disk or memory


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


def file_kind(path: str) -> str:
    """'fifo', 'socket', 'char', 'link', 'dir', 'file' (for assertions about what the generator made)."""
    st = os.lstat(path)
    for test, name in ((stat.S_ISLNK, "link"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "char"), (stat.S_ISDIR, "dir")):
        if test(st.st_mode):
            return name
    return "file"


__all__ = ["make_hostile_folder", "make_hostile_manifest", "make_hostile_shard", "file_kind", "HUGE_BYTES"]
