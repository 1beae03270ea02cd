import json

import numpy as np
import pytest
from PIL import Image

from clipforge.cli import main


def test_models_json_lists_registry(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"tiny", "ViT-B-32", "ViT-B-16", "ViT-L-14", "siglip-B-16"} <= set(rows)
    assert rows["ViT-B-32"]["parameters"] == 151_277_313 and rows["ViT-B-32"]["embed_dim"] == 512
    assert rows["siglip-B-16"]["head"] == "sigmoid"


def test_embed_text_and_images(tmp_path, capsys):
    good = tmp_path / "a.png"
    Image.fromarray(np.full((20, 20, 3), 120, np.uint8)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_text("not an image")
    rc = main(["embed", "--model", "tiny", "--text", "a cat", "a dog", "--image", str(good), str(bad), "--json"])
    cap = capsys.readouterr()
    rows = json.loads(cap.out)
    assert rc == 0 and [r["kind"] for r in rows] == ["text", "text", "image"]
    assert all(abs(np.linalg.norm(r["vector"]) - 1) < 1e-4 for r in rows) and len(rows[0]["vector"]) == 64
    assert "skipped" in cap.err and "b.jpg" in cap.err


def test_usage_errors_are_one_line_exit_2(capsys):
    assert main(["embed", "--model", "no-such-model", "--text", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load model 'no-such-model'" in err[0], err
    with pytest.raises(SystemExit) as e:
        main(["embed", "--model", "tiny", "--bogus"])
    assert e.value.code == 2
    assert main(["embed", "--model", "tiny"]) == 2


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "models" in out and "embed" in out and "demo" in out
