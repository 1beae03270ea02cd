"""Safe decoding: the acceptance folder of good, bad and awkward files, through the library and the CLI."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from clipforge.cli import main
from clipforge.data import BadSample, DecodeOptions, SkipCounter, decode_image, open_source
from data_fixtures import exif_rotated_jpeg, make_mixed_folder, pattern


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mixed"))
    return root, make_mixed_folder(root)


def test_check_cli_reports_exactly_the_bad_files(mixed, capsys):
    root, expected = mixed
    rc = main(["data", "check", f"files:{root}", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    want_bad = {name: reason for name, reason in expected.items() if reason}
    assert {sid: reason for sid, reason in report["bad"]["samples"]} == want_bad
    assert report["num_bad"] == len(want_bad)
    assert report["num_ok"] == len(expected) - len(want_bad)
    assert report["bad"]["by_reason"] == {r: list(want_bad.values()).count(r) for r in set(want_bad.values())}
    # The original modes are reported, including the awkward ones.
    for mode in ("CMYK", "P", "RGBA", "L"):
        assert mode in report["image_modes"]
    assert any(m.startswith("I") for m in report["image_modes"])  # the 16-bit PNG


def test_check_cli_text_output_and_folder_autodetect(mixed, capsys):
    root, expected = mixed
    assert main(["data", "check", root]) == 0
    out = capsys.readouterr().out
    assert "bad: 4" in out and "too_large" in out and "bomb.png" in out


def test_every_good_file_decodes_to_rgb(mixed):
    root, expected = mixed
    src = open_source(f"files:{root}")
    seen = {}
    for sample, img in src.iter_decoded():
        assert img.mode == "RGB"
        seen[sample.id] = np.asarray(img)
    assert set(seen) == {n for n, r in expected.items() if r is None}
    assert dict(src.skipped) == {"truncated": 1, "not_an_image": 1, "too_large": 1, "empty_file": 1}

    # Golden values computed without the decoder under test.
    assert seen["good.png"].shape == (21, 33, 3)
    np.testing.assert_array_equal(seen["good.png"], pattern(33, 21, 2))
    np.testing.assert_array_equal(seen["good.webp"], pattern(30, 30, 3))  # lossless webp
    assert np.abs(seen["cmyk.jpg"].astype(int) - [255, 0, 0]).max() <= 12  # CMYK (0,100%,100%,0) is red
    sixteen = (np.arange(200, dtype=np.uint32).reshape(10, 20) * 300).astype(np.float64)
    np.testing.assert_array_equal(seen["sixteen.png"][..., 0], np.rint(sixteen / 257).astype(np.uint8))
    assert seen["sixteen.png"][..., 0].max() > 200  # scaled, not clipped to white or cut to the low byte
    np.testing.assert_array_equal(seen["rgba.png"], 255)  # fully transparent -> white background
    grey = pattern(10, 10, 5)[..., 0]
    np.testing.assert_array_equal(seen["grey.png"], np.repeat(grey[..., None], 3, -1))


def test_exif_orientation_is_applied():
    data, expected = exif_rotated_jpeg()
    img = decode_image(data)
    arr = np.asarray(img).astype(int)
    assert arr.shape == expected.shape == (40, 20, 3)
    # Top is red, bottom is blue after the 90-degree clockwise turn (JPEG: compare away from the seam).
    assert np.abs(arr[:15] - expected[:15]).max() < 40
    assert np.abs(arr[25:] - expected[25:]).max() < 40


def test_bomb_limit_is_configurable_and_checked_before_decoding():
    data = Image.new("L", (300, 200)).tobytes()
    png = io.BytesIO()
    Image.new("L", (300, 200)).save(png, "PNG")
    with pytest.raises(BadSample) as e:
        decode_image(png.getvalue(), DecodeOptions(max_pixels=300 * 200 - 1))
    assert e.value.reason == "too_large"
    assert decode_image(png.getvalue(), DecodeOptions(max_pixels=300 * 200)).size == (300, 200)
    assert decode_image(png.getvalue(), DecodeOptions(max_pixels=None)).size == (300, 200)
    assert len(data) == 60000


def test_max_pixels_reaches_the_reader(mixed):
    root, _ = mixed
    src = open_source(f"files:{root}", max_pixels=1000)  # 48x32 = 1536 px is now too large too
    ids = {s.id for s, _ in src.iter_decoded()}
    assert "good.jpg" not in ids and "good.png" in ids
    assert ("good.jpg", "too_large") in src.skipped.samples


def test_skip_counter_merges_and_pickles():
    import pickle

    a = SkipCounter()
    a.add("x", "truncated")
    b = pickle.loads(pickle.dumps(a))
    b.add("y", "truncated")
    b.add("z", "not_an_image")
    a.merge(b)
    assert dict(a) == {"truncated": 3, "not_an_image": 1}
    assert a.samples[:2] == [("x", "truncated"), ("x", "truncated")]
    assert a.as_dict()["total"] == 4


def test_missing_file_is_a_counted_skip(tmp_path):
    (tmp_path / "m.csv").write_text("image,caption\nnope.jpg,a cat\n")
    src = open_source(str(tmp_path / "m.csv"))
    assert list(src.iter_decoded()) == []
    assert dict(src.skipped) == {"missing_file": 1}
    assert os.path.basename(src[0].path) == "nope.jpg"
