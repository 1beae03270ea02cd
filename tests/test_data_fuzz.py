"""Fuzz: mutated image bytes and malformed manifests give counted skips or clear errors, never a crash.

A seeded mutation fuzzer always runs; property-based tests run too when `hypothesis` is installed.
"""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from clipforge.data import BadSample, DecodeOptions, decode_image, open_source
from clipforge.data.check import check_source
from clipforge.errors import ClipforgeError
from data_fixtures import pattern

OPTS = DecodeOptions(max_pixels=1_000_000)  # mutated headers may claim huge sizes: keep the fuzz cheap


def seeds() -> list[bytes]:
    img = Image.fromarray(pattern(24, 16, 9))
    out = []
    for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 80}), ("WEBP", {}), ("GIF", {}), ("BMP", {}),
                    ("TIFF", {}), ("PNG", {"_mode": "P"}), ("PNG", {"_mode": "LA"})):
        buf = io.BytesIO()
        mode = kw.pop("_mode", None)
        (img.convert(mode) if mode else img).save(buf, fmt, **kw)
        out.append(buf.getvalue())
    return out


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        op = rng.integers(0, 5)
        pos = int(rng.integers(0, max(len(b), 1)))
        if op == 0 and b:  # flip bytes
            b[pos] = int(rng.integers(0, 256))
        elif op == 1:  # truncate
            b = b[:pos]
        elif op == 2:  # insert junk
            b[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 64))).astype(np.uint8).tobytes()
        elif op == 3 and b:  # duplicate a slice
            end = min(len(b), pos + int(rng.integers(1, 200)))
            b[pos:pos] = b[pos:end]
        elif op == 4 and len(b) > 30:  # overwrite a header-ish region (sizes, chunk lengths)
            p = int(rng.integers(8, min(40, len(b))))
            b[p:p + 4] = rng.integers(0, 256, size=4).astype(np.uint8).tobytes()
    return bytes(b)


def check_decode(data: bytes) -> str:
    try:
        img = decode_image(data, OPTS)
    except BadSample as e:
        return e.reason
    assert img.mode == "RGB" and img.width * img.height <= OPTS.max_pixels
    return "ok"


def test_mutated_image_bytes_only_raise_bad_sample():
    rng = np.random.default_rng(1234)
    reasons = {}
    for base in seeds():
        for _ in range(60):
            r = check_decode(mutate(base, rng))
            reasons[r] = reasons.get(r, 0) + 1
    assert sum(reasons.values()) == 8 * 60
    assert reasons.get("ok", 0) > 0 and len(reasons) > 2  # the fuzz exercised good and several bad paths


def test_mutated_files_through_a_source_are_all_accounted_for(tmp_path):
    rng = np.random.default_rng(99)
    n = 0
    for i, base in enumerate(seeds()):
        for j in range(5):
            (tmp_path / f"f{i}_{j}.png").write_bytes(mutate(base, rng))
            n += 1
    report = check_source(open_source(f"files:{tmp_path}", max_pixels=1_000_000))
    assert report["num_ok"] + report["num_bad"] == n


def _manifest_lines(rng) -> list[str]:
    pool = [
        json.dumps({"image": "a.png", "caption": "fine"}),
        json.dumps({"image": 5, "caption": "image is a number"}),
        json.dumps({"image": "a.png", "captions": {"nested": [1, 2]}}),
        json.dumps({"image": "a.png", "captions": [None, 3, "ok"], "label": [1]}),
        json.dumps({"image": "a.png", "label": True}),
        json.dumps({"image": "a.png", "label": 1.5}),
        json.dumps({"image": "a.png", "label": "cat"}),
        json.dumps({"image": None}),
        json.dumps({"image": "http://example.com/x.jpg", "caption": "remote"}),
        json.dumps({"image": "../../../../etc/passwd", "caption": "not an image"}),
        json.dumps({"image": "a.png", "id": {"weird": "id"}}),
        json.dumps([1, 2, 3]),
        json.dumps("just a string"),
        "{broken json",
        "",
        "\x00\x01\x02",
        "[" * 5000,
        "{" + '"a":' * 3 + "1}",
    ]
    return [pool[int(i)] for i in rng.integers(0, len(pool), size=int(rng.integers(1, 12)))]


def _exercise(spec: str):
    try:
        src = open_source(spec)
    except ClipforgeError:
        return "error"
    for _ in src.iter_decoded():
        pass
    list(src)
    return "ok"


def test_malformed_manifests_give_counted_skips_or_clear_errors(tmp_path):
    Image.fromarray(pattern(4, 4)).save(tmp_path / "a.png")
    rng = np.random.default_rng(7)
    outcomes = []
    for k in range(40):
        lines = _manifest_lines(rng)
        p = tmp_path / f"m{k}.jsonl"
        p.write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
        outcomes.append(_exercise(str(p)))
        # The same rows as CSV / TSV, with ragged cells and stray quotes.
        cells = [ln.replace(",", ";")[:40] for ln in lines]
        csv_text = "image,caption,label\n" + "\n".join(f'a.png,"{c}' if i % 3 == 0 else f"a.png,{c}"
                                                         for i, c in enumerate(cells))
        (tmp_path / f"m{k}.csv").write_text(csv_text)
        outcomes.append(_exercise(str(tmp_path / f"m{k}.csv")))
        (tmp_path / f"m{k}.tsv").write_bytes(bytes(rng.integers(0, 256, size=200).astype(np.uint8)))
        outcomes.append(_exercise(f"tsv:{tmp_path / f'm{k}.tsv'}"))
    assert "ok" in outcomes and "error" in outcomes


def test_garbage_parquet_and_shards_are_clear_errors_or_skips(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ClipforgeError, match="parquet"):
        open_source(str(tmp_path / "x.parquet"))
    (tmp_path / "x.tar").write_bytes(os.urandom(3000))
    src = open_source(str(tmp_path / "x.tar"))
    assert list(src.iter_decoded()) == [] and src.skipped.total >= 1
    assert len(src) == 0 and src.skipped.total >= 1


try:  # property-based versions of the above when hypothesis is installed (the seeded fuzz always runs)
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    def test_property_based_fuzz_needs_hypothesis():
        pytest.skip("hypothesis is not installed")
else:
    SEEDS = seeds()


    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(base=st.sampled_from(range(len(SEEDS))),
           edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
           cut=st.floats(0.0, 1.0))
    def test_property_decode_never_crashes(base, edits, cut):
        b = bytearray(SEEDS[base])
        for where, val in edits:
            b[int(where * len(b))] = val
        b = b[: max(1, int(len(b) * cut))] if cut < 0.95 else b
        check_decode(bytes(b))


    @settings(max_examples=60, deadline=None)
    @given(rows=st.lists(st.dictionaries(st.sampled_from(["image", "caption", "captions", "label", "id", "x"]),
                                         st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                                   st.text(max_size=12), st.lists(st.text(max_size=5), max_size=3))),
                         max_size=8))
    def test_property_jsonl_rows_never_crash(tmp_path_factory, rows):
        d = tmp_path_factory.mktemp("hyp")
        p = d / "m.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in rows))
        _exercise(str(p))
