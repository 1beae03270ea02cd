"""`clipforge explain` (issue 29): the figure through the output policy, JSON maps, and bad input refused in one
line before the model runs."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from clipforge.cli import main
from clipforge.explain import explain
from clipforge.output_dirs import png_marked
from clipforge.explain.render import EXPLAIN_KIND


def _image(tmp_path):
    arr = np.zeros((40, 56, 3), np.uint8)
    arr[4:20, 30:50] = 255
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    return str(p)


def test_draws_one_panel_per_text_and_prints_the_peaks(tmp_path, ckpt, capsys):
    img, out = _image(tmp_path), tmp_path / "map.png"
    assert main(["explain", "-m", ckpt, "--image", img, "--text", "a white box", "--text", "a dog",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "a white box" in text and "a dog" in text and "grid 8x8" in text
    assert png_marked(EXPLAIN_KIND)(out)
    one = tmp_path / "one.png"
    assert main(["explain", "-m", ckpt, "--image", img, "--text", "a dog", "--out", str(one)]) == 0
    with Image.open(out) as two_panels, Image.open(one) as one_panel:
        assert two_panels.width > one_panel.width  # image + 2 panels vs image + 1
    assert main(["explain", "-m", ckpt, "--image", img, "--text", "a cat", "--out", str(out)]) == 0  # own file
    capsys.readouterr()


def test_json_maps_equal_the_python_call(tmp_path, ckpt, capsys):
    img = _image(tmp_path)
    assert main(["explain", "-m", ckpt, "--image", img, "--text", "a white box", "--method", "gradcam",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = explain(ckpt, img, ["a white box"], method="gradcam")
    assert got["method"] == "gradcam" and got["grid"] == [8, 8] and got["image_size"] == [56, 40]
    assert np.allclose(np.array(got["maps"]), want.maps, atol=1e-4)


def test_bad_input_is_one_line_before_the_model_loads(tmp_path, ckpt, capsys):
    img = _image(tmp_path)
    assert main(["explain", "-m", ckpt, "--image", str(tmp_path / "missing.png"), "--text", "a"]) == 2
    assert "no such file" in capsys.readouterr().err
    many = [a for i in range(5) for a in ("--text", f"t{i}")]
    assert main(["explain", "-m", ckpt, "--image", img, *many, "--max-texts", "4"]) == 2
    assert "--max-texts is 4" in capsys.readouterr().err
    assert main(["explain", "-m", ckpt, "--image", img, "--text", "a", "--size", "30"]) == 2
    assert "--size must be a positive multiple of 4" in capsys.readouterr().err
    theirs = tmp_path / "theirs.png"
    Image.new("RGB", (4, 4)).save(theirs)
    before = theirs.read_bytes()
    assert main(["explain", "-m", ckpt, "--image", img, "--text", "a", "--out", str(theirs)]) == 2
    assert theirs.read_bytes() == before and "--overwrite" in capsys.readouterr().err
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    assert main(["explain", "-m", ckpt, "--image", str(garbage), "--text", "a"]) == 2
    assert "garbage.png" in capsys.readouterr().err


def test_a_method_the_tower_lacks_names_what_it_offers(tmp_path, capsys):
    assert main(["explain", "-m", "tiny-resnet", "--image", _image(tmp_path), "--text", "a", "--method",
                 "tokens"]) == 2
    assert "offers maskclip" in capsys.readouterr().err
