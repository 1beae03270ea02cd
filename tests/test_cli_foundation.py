import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clipforge.cli import build_parser, main


def test_models_json_lists_registry(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"tiny", "ViT-B-32", "ViT-B-16", "ViT-L-14", "siglip-B-16"} <= set(rows)
    assert rows["ViT-B-32"]["parameters"] == 151_277_313 and rows["ViT-B-32"]["embed_dim"] == 512
    assert rows["siglip-B-16"]["head"] == "sigmoid"


def test_models_table_lists_every_registered_model(capsys):
    """The text table, too (a tower without patches, ResNet / EfficientNet, once crashed its formatting)."""
    assert main(["models", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == names


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


def test_help_does_not_import_the_heavy_libraries():
    """The CLI imports every command module to build its parser; they import the library lazily."""
    code = ("import sys; from clipforge.cli import build_parser; build_parser(['--help']); "
            "print(sorted(m for m in ('torch', 'sklearn', 'faiss', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_library_errors_name_parameters_and_the_cli_names_flags(capsys, ckpt, digits_demo):
    from clipforge.cli import command_flags, translate_error
    from clipforge.errors import UsageError
    from clipforge.evaluate import run_eval

    val = f"imagefolder:{digits_demo['val_dir']}"
    with pytest.raises(UsageError) as e:
        run_eval(ckpt, "zeroshot-classification", val, k_shot=4)
    assert str(e.value).startswith("`k_shot` does not apply to eval task 'zeroshot-classification'")
    assert "--" not in str(e.value) and "linear-probe" in str(e.value)  # names the task it belongs to
    assert main(["eval", "-m", ckpt, "--task", "zeroshot-classification", "-d", val, "--k-shot", "4"]) == 2
    err = capsys.readouterr().err
    assert "error: --k-shot does not apply to eval task 'zeroshot-classification'" in err
    flags = command_flags(build_parser(["classify"]))
    assert flags["k"] == "--top-k" and flags["mad_threshold"] == "--mad-threshold"
    assert translate_error("`k` and `unknown_param` and `k`", flags) == "--top-k and `unknown_param` and --top-k"
