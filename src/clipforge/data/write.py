"""Convert any source to webdataset shards or to a JSONL / CSV / parquet manifest.

Shards: `OUT/shard-000000.tar`, ... with members `<key>.<ext>` (the original encoded bytes, so pixels survive a
round trip exactly), `<key>.txt` (one caption per line), `<key>.cls` (label) and `<key>.json` ({"id",
"captions", "label", user metadata}). Keys are sequential numbers (`000000042`): webdataset splits a key at
its first dot, so source ids such as `cat/001.jpg` cannot be keys; the id is kept in the `.json` and the
reader restores it. `classnames.txt` is written beside the shards when the source has class names.

Manifests reference images where they already are (paths relative to the manifest) and extract images that
live only inside tar shards to `<manifest stem>_images/`.

Each image is decoded once before it is written (`verify=True`): bad ones are skipped and counted, so the
output holds only readable samples. Every file is written to a temporary name and renamed when complete.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.atomic import atomic_write_path, atomic_write_text
from clipforge.data.decode import BadSample, SkipCounter
from clipforge.data.sample import text_safe
from clipforge.errors import UsageError
from clipforge.output_dirs import OutputFile, claim_output_dir, vet_output_dir
from clipforge.progress import track

_SHARD_NAME = re.compile(r"shard-\d{6,}\.tar")

FORMATS = ("wds", "jsonl", "csv", "parquet")


def _jsonable(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if k in ("path", "size", "mtime") or k.startswith("__"):
            continue  # file-system facts of the source, not user metadata
        try:
            json.dumps(v)
            out[k] = v
        except (TypeError, ValueError):
            out[k] = str(v)
    return out


def _samples(source, verify: bool, skipped: SkipCounter, progress):
    """(sample, image bytes) for every usable sample; the others are counted."""
    source.skipped = source.open_skipped.copy()
    try:
        total = len(source)
    except TypeError:
        total = None
    skipped.merge(source.open_skipped)
    for sample in track(source, total, desc="converting", unit="img", progress=progress):
        try:
            data = sample.image_bytes()
            if verify:
                sample.load_image()
                sample.drop_image()
        except BadSample as e:
            skipped.add(sample.id, e.reason)
            continue
        yield sample, data
    # A streaming reader may count broken members while iterating.
    for item in source.skipped.samples[len(source.open_skipped.samples):]:
        skipped.add(*item)


def _is_shard_folder(path) -> bool:
    """A folder an older `write_wds` filled (no marker): shard-NNNNNN.tar files and classnames.txt only."""
    return all(_SHARD_NAME.fullmatch(n) or n == "classnames.txt" for n in os.listdir(path))


def write_wds(source, out_dir: str, shard_size: int = 1000, *, verify: bool = True, progress=None,
              overwrite: bool = False) -> dict:
    """Write `source` as tar shards into `out_dir`: a new or empty folder, or an earlier conversion (its stale
    shards are removed); any other folder is refused unless `overwrite` (then it is replaced)."""
    if shard_size < 1:
        raise UsageError(f"shard_size must be >= 1, got {shard_size}")
    out_dir = str(claim_output_dir(out_dir, "wds-shards", overwrite=overwrite, recognise=_is_shard_folder)[0])
    skipped = SkipCounter()
    shards: list[str] = []
    samples = _samples(source, verify, skipped, progress)
    n = 0

    def write_shard(tmp: str, first) -> None:  # the next `shard_size` samples, streamed into one tar
        nonlocal n
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            for sample, data in itertools.chain([first], itertools.islice(samples, shard_size - 1)):
                _add_sample(tf, f"{n:09d}", sample, data)
                n += 1

    for first in samples:
        final = os.path.join(out_dir, f"shard-{len(shards):06d}.tar")
        atomic_write_path(final, lambda tmp: write_shard(tmp, first))  # noqa: B023 - called right here
        shards.append(final)
    _remove_stale_shards(out_dir, len(shards))
    if source.classnames:
        atomic_write_text(os.path.join(out_dir, "classnames.txt"), "".join(c + "\n" for c in source.classnames))
    return {"format": "wds", "out": out_dir, "written": n, "shards": shards, "skipped": skipped.as_dict()}


def _add_sample(tf: tarfile.TarFile, key: str, sample, data: bytes) -> None:
    """The members of one sample: the image bytes as stored, .json (id, captions, label, metadata), .txt, .cls."""
    ext = (sample.ext or "jpg").lower()
    meta = {"id": sample.id, "captions": sample.captions}
    if sample.label is not None:
        meta["label"] = int(sample.label)
    meta.update({k: v for k, v in _jsonable(sample.meta).items() if k not in meta})
    # ASCII JSON: metadata may hold lone surrogates (from JSON escapes); escaped, they round-trip
    members = [(ext, data), ("json", json.dumps(meta).encode("ascii"))]
    if sample.captions:
        members.append(("txt", "\n".join(c.replace("\n", " ") for c in sample.captions).encode("utf-8")))
    if sample.label is not None:
        members.append(("cls", str(int(sample.label)).encode()))
    for mext, payload in members:
        info = tarfile.TarInfo(f"{key}.{mext}")
        info.size, info.mtime, info.mode = len(payload), 0, 0o644  # mtime 0: reproducible shards
        tf.addfile(info, io.BytesIO(payload))


def _read_small(path: str, cap: int = 1 << 20):
    """A small text file's content (None when unreadable or larger than `cap`)."""
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
        return data.decode("utf-8") if len(data) <= cap else None
    except (OSError, UnicodeDecodeError):
        return None


def _remove_stale_shards(out_dir: str, keep: int) -> None:
    """Shards numbered >= keep left by an earlier, larger conversion into the same folder would be read back."""
    for name in os.listdir(out_dir):
        if name.startswith("shard-") and name.endswith(".tar") and name[6:-4].isdigit() and int(name[6:-4]) >= keep:
            os.remove(os.path.join(out_dir, name))


def write_manifest(source, out_path: str, fmt: str | None = None, *, verify: bool = True, progress=None,
                   overwrite: bool = False, owned=None) -> dict:
    """Write `source` as a manifest file at `out_path`: a new file, or (with `overwrite`, or where `owned(path)`
    recognises it as the caller's earlier output) a replaced one; a folder, link, device or FIFO there is
    refused always. Images that exist only inside shards are extracted to the folder OUT_images beside it,
    which must be new, empty or an earlier extraction; a `classnames.txt` beside it with other names is
    refused. `overwrite` allows both."""
    fmt = fmt or os.path.splitext(out_path)[1].lstrip(".").lower()
    if fmt not in ("jsonl", "csv", "parquet"):
        raise UsageError(f"manifest format must be one of ['jsonl', 'csv', 'parquet'], got {fmt!r}")
    output = OutputFile(overwrite=overwrite, param="out", owned=owned)
    output.vet(out_path)  # before any sample is read
    out_dir = os.path.dirname(os.path.abspath(out_path))
    img_dir = os.path.splitext(os.path.abspath(out_path))[0] + "_images"
    vet_output_dir(img_dir, "manifest-images", overwrite=overwrite, param="out")
    names_file = os.path.join(out_dir, "classnames.txt")
    names = "".join(c + "\n" for c in source.classnames) if source.classnames else None
    if names is not None and not overwrite and os.path.lexists(names_file) and _read_small(names_file) != names:
        raise UsageError(f"{names_file} exists with other class names: write the manifest to another folder, or "
                         "pass `overwrite` to replace it")
    os.makedirs(out_dir, exist_ok=True)
    claimed = False
    skipped = SkipCounter()
    rows = []
    for n, (sample, data) in enumerate(_samples(source, verify, skipped, progress)):
        if sample.path is not None and "://" not in sample.path and os.path.isfile(sample.path):
            image = os.path.relpath(os.path.abspath(sample.path), out_dir).replace(os.sep, "/")
        else:  # bytes that only exist inside a shard: extract them next to the manifest
            if not claimed:
                claim_output_dir(img_dir, "manifest-images", overwrite=overwrite)
                claimed = True
            name = f"{n:09d}.{(sample.ext or 'jpg').lower()}"
            with open(os.path.join(img_dir, name), "wb") as f:
                f.write(data)
            image = f"{os.path.basename(img_dir)}/{name}"
        row = {"id": sample.id, "image": image, "captions": list(sample.captions)}
        if sample.label is not None:
            row["label"] = int(sample.label)
        rows.append(row)

    def write(tmp: str) -> None:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                # ASCII JSON keeps non-UTF-8 file names exact: "\udce9" reads back as the same path
                f.writelines(json.dumps(r) + "\n" for r in rows)
        elif fmt == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["id", "image", "captions", "label"])
                w.writeheader()
                for r in rows:  # a non-UTF-8 file name is written escaped (CSV has no lossless form)
                    w.writerow({**r, "image": text_safe(r["image"]),
                                "captions": json.dumps(r["captions"], ensure_ascii=False)})
        else:
            cols = {"id": [r["id"] for r in rows], "image": [text_safe(r["image"]) for r in rows],
                    "captions": [r["captions"] for r in rows], "label": [r.get("label") for r in rows]}
            schema = pa.schema([("id", pa.string()), ("image", pa.string()), ("captions", pa.list_(pa.string())),
                                ("label", pa.int64())])
            pq.write_table(pa.table(cols, schema=schema), tmp)

    atomic_write_path(os.path.abspath(out_path), write, output=output)
    if names is not None:
        atomic_write_text(names_file, names)
    return {"format": fmt, "out": out_path, "written": len(rows), "skipped": skipped.as_dict()}


def convert(source, to: str, out: str, *, shard_size: int = 1000, verify: bool = True, progress=None,
            overwrite: bool = False, owned=None) -> dict:
    """Write `source` as `to` (one of FORMATS) at `out` (a folder for wds, a file for manifests; `owned` as in
    `write_manifest`)."""
    if to not in FORMATS:
        raise UsageError(f"unknown output format {to!r}; valid: {list(FORMATS)}")
    if to == "wds":
        return write_wds(source, out, shard_size, verify=verify, progress=progress, overwrite=overwrite)
    return write_manifest(source, out, to, verify=verify, progress=progress, overwrite=overwrite, owned=owned)
