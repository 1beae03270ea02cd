"""Decoded-memory budget (reliability issue): an image is priced from its header — bytes a pixel of its mode,
the codec's own buffers, the EXIF turn, the 8-bit RGB result — and refused as `too_large` when that is over
`DecodeOptions.max_decoded_bytes`, before a pixel is decoded. High bit depths, floats and alpha are brought to
8-bit RGB tile by tile, bit-identical to the whole-image numpy conversion they replace (written out here as the
reference), and a near-limit image (9400 x 9400 16-bit, 213 KB on disk) decodes in a child process, alone and
through `data check`, under the 1.5 GB peak-RSS budget."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipforge.data import BadSample, DecodeOptions, decode_image
from clipforge.data import decode as dec
from clipforge.errors import UsageError
import hostile_images as hi

BUDGET = 1536 * 2**20  # the budget for a whole command: 1.5 GB peak RSS
HERE = Path(__file__).parent


def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# -- the reference: the old whole-image conversion, in plain numpy / Pillow --------------------------------

def reference_rgb(im: Image.Image, background=(255, 255, 255)) -> np.ndarray:
    """What `to_rgb` computed before it worked by tiles: float64 copies of the whole image."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        if arr.min() >= 0 and arr.max() <= 65535:
            arr = arr / 257.0
        else:
            lo, hi_ = float(arr.min()), float(arr.max())
            arr = (arr - lo) / max(hi_ - lo, 1.0) * 255.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, -1)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            grey = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, -1)
    if mode in ("RGBA", "LA", "PA") or mode == "P" and "transparency" in im.info:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return np.asarray(Image.alpha_composite(base, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


@pytest.fixture(params=[None, 997], ids=["default-tiles", "odd-tiles"])
def tiles(request, monkeypatch):
    """Run a conversion test at the default tile size and at a small odd one (many partial tiles)."""
    if request.param is not None:
        monkeypatch.setattr(dec, "_TILE_PIXELS", request.param)
    return request.param


def _sixteen(w=331, h=229, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 65536, (h, w), dtype=np.uint32)
    edges = np.array([0, 65535, 128, 129, 385, 386, 257 * 100 + 128, 257 * 100 + 129], np.uint32)
    arr.reshape(-1)[:len(edges)] = edges  # rounding edges: k*257 +- 128 sit either side of a half
    return arr.astype(np.uint16)


def test_sixteen_bit_png_and_tiff_equal_round_v_over_257(tiles):
    arr = _sixteen()
    want = np.floor(arr.astype(np.float64) / 257 + 0.5).astype(np.uint8)  # round(v / 257): never a tie
    for data in (_png(Image.fromarray(arr)), _encode(Image.fromarray(arr), "TIFF")):
        got = np.asarray(decode_image(data))
        assert got.shape == arr.shape + (3,)
        np.testing.assert_array_equal(got[..., 0], want)
        np.testing.assert_array_equal(got, reference_rgb(Image.open(io.BytesIO(data))))


def test_wide_integer_images_are_min_max_scaled_over_the_whole_image(tiles):
    rng = np.random.default_rng(1)
    arr = rng.integers(-70_000, 300_000, (157, 203), dtype=np.int64).astype(np.int32)
    data = _encode(Image.fromarray(arr, "I"), "TIFF")
    np.testing.assert_array_equal(np.asarray(decode_image(data)), reference_rgb(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("top", [1.0, 255.0, 1e6])
def test_float_tiff_with_nan_and_inf_equals_the_reference(tmp_path, tiles, top):
    p = hi.float_tiff(tmp_path / "f.tif", size=(211, 97), top=top)
    got = np.asarray(decode_image(p.read_bytes()))
    np.testing.assert_array_equal(got, reference_rgb(Image.open(p)))
    flat = np.asarray(Image.open(p)).reshape(-1)
    grey = got[..., 0].reshape(-1)
    assert (grey[np.isnan(flat)] == 0).all() and (grey[np.isposinf(flat)] == 255).all()
    assert (grey[np.isneginf(flat)] == 0).all()


@pytest.mark.parametrize("background", [(255, 255, 255), (10, 200, 30)])
def test_alpha_is_composited_as_pillow_alpha_composite_does(tmp_path, tiles, background):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (151, 263, 4), dtype=np.uint8)
    la = rng.integers(0, 256, (151, 263, 2), dtype=np.uint8)
    cases = [_png(Image.fromarray(rgba, "RGBA")), _png(Image.fromarray(la, "LA")),
             hi.palette_transparency(tmp_path / "i.png", size=(263, 151)).read_bytes(),
             hi.palette_transparency(tmp_path / "a.png", per_entry_alpha=True, size=(263, 151)).read_bytes(),
             hi.png_stream(263, 151, 8, 6)]  # the hand-made stream the big generators use
    for data in cases:
        src = Image.open(io.BytesIO(data))
        got = decode_image(data, DecodeOptions(background=background))
        assert got.info["orig_mode"] == src.mode
        np.testing.assert_array_equal(np.asarray(got), reference_rgb(src, background))


def test_exif_turned_images_equal_the_turned_reference():
    for orientation in range(1, 9):
        img = hi.stripes(67, 41)
        exif = img.getexif()
        exif[0x0112] = orientation
        data = _encode(img, "PNG", exif=exif)  # lossless, so the pixels can be compared exactly
        want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(decode_image(data)), want)
        if orientation in (6, 8):
            assert decode_image(data).size == (41, 67)


def test_a_plain_rgb_result_no_longer_holds_the_file():
    data = _encode(hi.stripes(40, 30), "BMP")
    img = decode_image(data)
    assert type(img) is Image.Image and img.mode == "RGB" and getattr(img, "fp", None) is None


# -- the budget -----------------------------------------------------------------------------------------

def _refusal(data: bytes, opts: DecodeOptions = DecodeOptions()) -> BadSample:
    with pytest.raises(BadSample) as e:
        decode_image(data, opts)
    return e.value


def test_over_budget_is_refused_from_the_header_with_one_line_naming_max_decoded_bytes(tmp_path):
    # 8200 x 8200 RGBA is under the pixel limit but needs 8 bytes a pixel: 513 MiB > 512 MiB. The file holds
    # no pixel data at all: decoding it would say "truncated", so this refusal came from the header.
    data = hi.claimed_png(tmp_path / "c.png", 8200, 8200).read_bytes()
    assert len(data) < 200
    e = _refusal(data)
    assert e.reason == "too_large"
    msg = str(e)
    assert "\n" not in msg and "`max_decoded_bytes`" in msg and "8200x8200 RGBA" in msg and "MiB" in msg
    # without the budget the same file is read, and found to be a header without pixels
    assert _refusal(data, DecodeOptions(max_decoded_bytes=None)).reason == "truncated"


def test_decode_bytes_prices_mode_codec_and_turn():
    px = 1000 * 800
    allow = dec._TILE_BYTES * dec._TILE_PIXELS
    assert dec.decode_bytes("RGB", (1000, 800)) == 4 * px  # Pillow pads RGB to 4 bytes; nothing to convert
    assert dec.decode_bytes("I;16", (1000, 800)) == 2 * px + 4 * px + allow
    assert dec.decode_bytes("RGBA", (1000, 800)) == 8 * px + allow
    assert dec.decode_bytes("L", (1000, 800)) == 5 * px + allow
    assert dec.decode_bytes("RGB", (1000, 800), turned=True) == 8 * px
    assert dec.decode_bytes("RGB", (1000, 800), codec_bytes=3 * px) == 7 * px
    assert dec.decode_bytes("L", (3, 2)) == 6 * 5 + 6 * dec._TILE_BYTES  # the tile allowance scales down


def test_each_cost_is_priced_by_a_budget_between_with_and_without_it():
    base = hi.stripes(600, 400)
    px = 600 * 400
    opts = DecodeOptions(max_decoded_bytes=5 * px)  # admits a baseline RGB JPEG (4 bytes a pixel)
    assert decode_image(_encode(base, "JPEG"), opts).size == (600, 400)
    # progressive 4:4:4 keeps 2 bytes a pixel per component of DCT coefficients: 4 + 6
    e = _refusal(_encode(base, "JPEG", progressive=True, subsampling=0), opts)
    assert e.reason == "too_large" and "`max_decoded_bytes`" in str(e)
    assert decode_image(_encode(base, "JPEG", progressive=True, subsampling=0),
                        DecodeOptions(max_decoded_bytes=10 * px)).size == (600, 400)
    # an EXIF turn holds two copies
    exif = base.getexif()
    exif[0x0112] = 6
    turned = _encode(base, "JPEG", exif=exif)
    e = _refusal(turned, opts)
    assert e.reason == "too_large" and "turned by EXIF" in str(e)
    assert decode_image(turned, DecodeOptions(max_decoded_bytes=8 * px)).size == (400, 600)
    assert decode_image(turned, DecodeOptions(max_decoded_bytes=5 * px, apply_exif=False)).size == (600, 400)
    # 16-bit: 2 decoded + 4 RGB (+ the tile allowance)
    sixteen = _png(Image.fromarray(_sixteen(600, 400)))
    assert _refusal(sixteen, opts).reason == "too_large"
    allow = dec._TILE_BYTES * dec._TILE_PIXELS
    assert _refusal(sixteen, DecodeOptions(max_decoded_bytes=6 * px + allow - 1)).reason == "too_large"
    assert decode_image(sixteen, DecodeOptions(max_decoded_bytes=6 * px + allow)).size == (600, 400)


def test_draft_size_decodes_a_jpeg_smaller_and_is_priced_at_that_size():
    data = _encode(hi.stripes(1600, 1200), "JPEG")
    img = decode_image(data, DecodeOptions(draft_size=(200, 200), max_decoded_bytes=4 * 400 * 300))
    assert img.size == (400, 300)  # 1/4 scale: the smallest that is still at least 200 on both sides
    assert _refusal(data, DecodeOptions(max_decoded_bytes=4 * 400 * 300)).reason == "too_large"
    assert decode_image(_png(Image.new("RGB", (64, 48))), DecodeOptions(draft_size=(8, 8))).size == (64, 48)


def test_none_disables_the_budget():
    data = _png(Image.fromarray(_sixteen(300, 200)))
    assert _refusal(data, DecodeOptions(max_decoded_bytes=1000)).reason == "too_large"
    assert decode_image(data, DecodeOptions(max_decoded_bytes=None)).size == (300, 200)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "512MB", float("nan")])
def test_bad_budgets_are_usage_errors_naming_the_parameter(bad):
    with pytest.raises(UsageError, match="`max_decoded_bytes`") as e:
        DecodeOptions(max_decoded_bytes=bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field,bad", [("max_pixels", 0), ("max_pixels", "many"), ("draft_size", (0, 10)),
                                       ("draft_size", 224), ("draft_size", (1.5, 2))])
def test_other_bad_options_are_usage_errors_naming_them(field, bad):
    with pytest.raises(UsageError, match=f"`{field}`"):
        DecodeOptions(**{field: bad})


def test_the_near_limit_16_bit_png_fits_the_default_budget_and_the_next_size_up_does_not(tmp_path):
    side = hi.NEAR_LIMIT_SIDE
    assert side * side <= dec.DEFAULT_MAX_PIXELS
    assert dec.decode_bytes("I;16", (side, side)) <= dec.DEFAULT_MAX_DECODED_BYTES
    over = hi.claimed_png(tmp_path / "o.png", 9500, 9400, depth=16, colour=0).read_bytes()  # 89.3 Mpx, 536 MB
    assert _refusal(over).reason == "too_large"


def test_hostile_headers_are_counted(tmp_path):
    assert _refusal(hi.bomb_png_over_limit(tmp_path / "b.png").read_bytes()).reason == "too_large"
    e = _refusal(hi.claimed_png(tmp_path / "h.png", 2**31 - 1, 2**31 - 1).read_bytes(),
                 DecodeOptions(max_pixels=None))
    assert e.reason == "too_large" and "`max_decoded_bytes`" in str(e)  # the budget holds when the pixel cap is off
    assert _refusal(hi.zero_width_png(tmp_path / "z.png").read_bytes()).reason == "not_an_image"


# -- peak memory, measured in a child process -----------------------------------------------------------

_CHILD = r"""
import json, sys
from PIL import Image
from clipforge.data import decode_image

def hwm():
    with open("/proc/self/status") as f:
        return 1024 * int(next(ln.split()[1] for ln in f if ln.startswith("VmHWM:")))

out = {"before": hwm()}
for path in sys.argv[1:]:
    img = decode_image(open(path, "rb").read())
    out[path] = {"size": list(img.size), "hwm": hwm(), "rows": [
        img.crop((0, y, img.width, y + 1)).tobytes().hex() for y in (0, img.height // 2, img.height - 1)]}
    del img
print(json.dumps(out))
"""


def _child(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPFORGE_PROGRESS": "0", "PYTHONPATH": str(HERE)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)


def test_near_limit_16_bit_png_decodes_under_the_budget_and_equals_the_reference(tmp_path):
    p = hi.png16_near_limit(tmp_path / "big16.png")
    assert p.stat().st_size < 400_000
    r = _child(_CHILD, str(p))
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    out = report[str(p)]
    side = hi.NEAR_LIMIT_SIDE
    assert out["size"] == [side, side]
    assert out["hwm"] < BUDGET, out["hwm"] / 2**20
    # what decoding added stays within the price it was admitted at (and the few MB reading the file takes)
    assert out["hwm"] - report["before"] <= dec.decode_bytes("I;16", (side, side)) + 8 * 2**20, (
        (out["hwm"] - report["before"]) / 2**20)
    row = np.frombuffer(hi.png_row(side, 16, 0), ">u2").astype(np.float64)
    want = np.repeat(np.floor(row / 257 + 0.5).astype(np.uint8), 3).tobytes().hex()
    assert out["rows"] == [want] * 3  # every row of the file repeats the first


def test_data_check_reads_near_limit_images_under_the_budget_and_counts_the_rest(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    ok = hi.fuzz_input_near_limit_images(d) + hi.fuzz_input_awkward_modes(d)
    ok.append(hi.webp_image(d / "image__webp.webp", 2000, 1500))
    bad = hi.fuzz_input_refused_images(d)
    code = ("import json, sys\nfrom clipforge.cli import main\nrc = main(['data', 'check', sys.argv[1], '--json'])\n"
            "hwm = 1024 * int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))\n"
            "print(json.dumps({'rc': rc, 'hwm': hwm}))\n")
    r = _child(code, f"files:{d}")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    tail = json.loads(lines[-1])
    report = json.loads("\n".join(lines[:-1]))
    assert tail["rc"] == 0
    assert tail["hwm"] < BUDGET, tail["hwm"] / 2**20
    assert report["num_ok"] == len(ok) and report["num_bad"] == len(bad)
    assert report["bad"]["by_reason"] == {"too_large": 3, "not_an_image": 1}
    assert dict(report["bad"]["samples"]) == {"image__bomb_over_pixel_limit.png": "too_large",
                                              "image__claims_2g_by_2g.png": "too_large",
                                              "image__claims_over_budget.png": "too_large",
                                              "image__zero_width.png": "not_an_image"}
    assert {"I;16", "RGBA", "RGB", "P", "F"} <= set(report["image_modes"])


def test_every_fuzz_input_generator_is_fast_small_and_named_for_the_image_target(tmp_path):
    import time

    for name, fn in sorted(vars(hi).items()):
        if name.startswith("fuzz_input_"):
            t = time.perf_counter()
            made = fn(tmp_path)
            assert time.perf_counter() - t < 3, name
            assert made and all(p.name.startswith("image__") and p.stat().st_size < 4 * 2**20 for p in made)
