"""Fuzz targets for every reader of untrusted bytes (reliability issue): each takes bytes (or text) and returns the
outcome it saw — "sample" (something usable came out), "counted" (the input was skipped and counted by reason), or
"error" (a one-line ClipforgeError) — and raises on anything else: a traceback-worthy exception, a multi-line
error, a sample count that does not add up.

Used in-process by tests/test_fuzz_readers.py (hypothesis drives the bytes) and in a child process that reports
its peak memory (`python tests/fuzz_targets.py DIR N`), so the memory budget is measured on the same inputs.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from clipforge.data import BadSample, DecodeOptions, decode_image, open_source
from clipforge.errors import ClipforgeError

OPTS = DecodeOptions(max_pixels=4_000_000)  # a mutated header may claim a huge size: refused from the header
BUDGET_BYTES = 1536 * 1024 * 1024          # the budget for any hostile input: 1.5 GB peak RSS


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg.strip() and "Traceback" not in msg, f"not one line: {msg!r}"
    return "error"


def seed_image(fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def seed_tar(n: int = 3) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(n):
            for ext, data in (("png", seed_image(seed=i)), ("txt", f"a photo number {i}".encode()),
                              ("json", json.dumps({"id": i, "label": i % 2}).encode())):
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def seed_manifest(kind: str, image: str) -> bytes:
    rows = [{"image": image, "caption": "a red square", "label": 0},
            {"image": image, "captions": ["two", "captions"], "label": 1}]
    if kind == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if kind == "csv":
        return ("image,caption,label\n" + "".join(f"{image},caption {i},{i}\n" for i in range(2))).encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"image": [image, image], "caption": ["a", "b"], "label": [0, 1]}), buf)
    return buf.getvalue()


def mutate(data: bytes, edits: list[tuple[int, int, int]], cut: int | None = None) -> bytes:
    """Overwrite / insert / delete bytes at positions (mod length), then optionally truncate."""
    b = bytearray(data)
    for op, pos, val in edits:
        if not b:
            break
        pos %= len(b)
        if op == 0:
            b[pos] = val & 0xFF
        elif op == 1:
            b[pos:pos] = bytes([val & 0xFF]) * (1 + val % 7)
        else:
            del b[pos:pos + 1 + val % 16]
    if cut is not None and b:
        b = b[:cut % (len(b) + 1)]
    return bytes(b)


# -- targets ---------------------------------------------------------------------------------------------------

def image_target(data: bytes) -> str:
    try:
        img = decode_image(data, OPTS)
    except BadSample as e:
        assert e.reason, e
        return "counted"
    assert img.mode == "RGB" and img.width * img.height <= OPTS.max_pixels
    return "sample"


def _drain(spec: str, **opts) -> str:
    try:
        src = open_source(spec, **opts)
        n_listed = src._len_or_none()  # None for a streamed (compressed) shard
        ok = sum(1 for _ in src.iter_decoded())
    except ClipforgeError as e:  # a whole-input problem: one line
        return _one_line(e)
    assert n_listed is None or ok <= n_listed, (ok, n_listed)
    if ok:
        return "sample"
    assert src.skipped.total >= 1 or not n_listed, "nothing usable, nothing counted"
    return "counted"


def _in_file(data: bytes, name: str, work: Path) -> Path:
    p = work / name
    p.write_bytes(data)
    return p


def tar_target(data: bytes, work: Path, compressed: bool = False) -> str:
    if compressed:
        data = gzip.compress(data, compresslevel=1)
    p = _in_file(data, "shard.tar.gz" if compressed else "shard.tar", work)
    return _drain(f"wds:{p}", max_pixels=OPTS.max_pixels)


def manifest_target(data: bytes, kind: str, work: Path) -> str:
    Image.open(io.BytesIO(seed_image())).save(work / "a.png")
    p = _in_file(data, f"m.{kind}", work)
    return _drain(f"{kind}:{p}", max_pixels=OPTS.max_pixels)


def checkpoint_config_target(text: bytes, work: Path) -> str:
    from clipforge.models import load_model

    d = work / "ck"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_bytes(text)
    try:
        load_model(str(d))
    except ClipforgeError as e:  # no weights here: every config ends in a one-line error, before allocating
        return _one_line(e)
    raise AssertionError("a checkpoint without weights loaded")


def yaml_config_target(text: bytes, work: Path) -> str:
    from clipforge.train import load_config

    p = _in_file(text, "c.yaml", work)
    try:
        load_config(str(p))
    except ClipforgeError as e:
        return _one_line(e)
    return "sample"


TARGETS = ("image", "tar", "tar.gz", "jsonl", "csv", "parquet", "checkpoint-config", "yaml-config")


def run_target(name: str, data: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if name == "image":
            return image_target(data)
        if name in ("tar", "tar.gz"):
            return tar_target(data, work, compressed=name == "tar.gz")
        if name in ("jsonl", "csv", "parquet"):
            return manifest_target(data, name, work)
        if name == "checkpoint-config":
            return checkpoint_config_target(data, work)
        if name == "yaml-config":
            return yaml_config_target(data, work)
    raise ValueError(name)


def run_path(name: str, path: Path) -> str:
    """A hostile input that is a file already (a sparse 1 GiB member, a near-limit PNG): read by the source
    that would meet it, never into this process whole."""
    if name == "image":
        with tempfile.TemporaryDirectory() as tmp:
            os.symlink(path.resolve(), Path(tmp) / f"x{path.suffix or '.png'}")
            return _drain(f"files:{tmp}")
    if name in ("tar", "tar.gz"):
        return _drain(f"wds:{path}")
    if name in ("jsonl", "csv", "parquet"):
        return _drain(f"{name}:{path}")
    return run_target(name, path.read_bytes()[:1 << 20])


def seed_for(name: str, k: int = 0) -> bytes:
    if name == "image":  # formats without checksums let more mutations through to the decoder
        return seed_image(("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")[k % 6])
    if name in ("tar", "tar.gz"):
        return seed_tar()
    if name in ("jsonl", "csv", "parquet"):
        return seed_manifest(name, "a.png")
    if name == "checkpoint-config":
        from clipforge.models import get_model_config

        return json.dumps({"format": "clipforge", "format_version": 1,
                           "config": get_model_config("tiny").to_dict()}).encode()
    return b"model:\n  name: tiny\nrun:\n  steps: 3\ndata:\n  train: jsonl:train.jsonl\n  batch_size: 8\noptim:\n  lr: 0.001\n"


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        return 1024 * int(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")))


def main(argv: list[str]) -> int:
    """Child mode: run every target on N seeded mutations of its seed input plus every file in DIR (hostile
    inputs named TARGET__anything, read by path), print a JSON report with the outcome counts and the peak RSS."""
    hostile_dir, n = Path(argv[0]), int(argv[1])
    rng = np.random.default_rng(2026)
    counts: dict = {}
    for name in TARGETS:
        inputs = [mutate(seed_for(name, k), [(int(rng.integers(0, 3)), int(rng.integers(0, 1 << 30)), int(rng.integers(0, 256)))
                                for _ in range(int(rng.integers(1, 8)))],
                         int(rng.integers(0, 1 << 30)) if rng.random() < 0.3 else None) for k in range(n)]
        outs = [run_target(name, data) for data in inputs]
        outs += [run_path(name, p) for p in sorted(hostile_dir.glob(f"{name}__*"))]
        for out in outs:
            counts.setdefault(name, {}).setdefault(out, 0)
            counts[name][out] += 1
    print(json.dumps({"counts": counts, "hwm_bytes": _hwm_bytes()}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
