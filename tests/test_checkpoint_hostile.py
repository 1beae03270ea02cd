"""Broken and hostile checkpoints: every case is a one-line error with the right exit code, checked before
anything is allocated (peak memory of all cases together stays under 1 GB, measured in a child process);
OpenAI's TorchScript `.pt` loads without running its code; head counts are never guessed silently."""
import json
import os
import pickle
import shutil
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from clipforge.cli import main
from peak_rss import embed_each_in_child
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models import create_model, default_tokenizer, load_model
from clipforge.models.config import CLIPConfig
from clipforge.models.config_checks import MAX_PARAMETERS
from clipforge.models.model_registry import get_model_config
from clipforge.models.param_count import count_parameters
from clipforge.models.convert.openai import state_to_openai

GB = 2**30


def _set(path, value):
    def apply(meta):
        node = meta
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return apply


def _drop(key):
    return lambda meta: meta.pop(key)


# name -> (change to config.json, exit code, words the one line must contain)
CONFIG_CASES = {
    "layers_1e9_float": (_set(["config", "vision", "layers"], 1e9), 2, "vision.layers"),
    "layers_1e9_int": (_set(["config", "vision", "layers"], 10**9), 2, "vision.layers"),
    "width_1e9": (_set(["config", "vision", "width"], 1e9), 2, "vision.width"),
    "width_1e9_int": (_set(["config", "text", "width"], 10**9), 2, "parameters"),
    "vocab_1e12": (_set(["config", "text", "vocab_size"], 10**12), 2, "parameters"),
    "image_4e6": (_set(["config", "vision", "image_size"], 4 * 10**6), 2, "parameters"),
    "heads_0": (_set(["config", "vision", "heads"], 0), 2, "vision.heads"),
    "heads_3": (_set(["config", "text", "heads"], 3), 2, "divisible"),
    "patch_0": (_set(["config", "vision", "patch_size"], 0), 2, "vision.patch_size"),
    "patch_5": (_set(["config", "vision", "patch_size"], 5), 2, "multiple"),
    "width_str": (_set(["config", "vision", "width"], "64"), 2, "vision.width"),
    "width_neg": (_set(["config", "vision", "width"], -64), 2, "vision.width"),
    "mlp_nan": (_set(["config", "text", "mlp_ratio"], float("nan")), 2, "text.mlp_ratio"),
    "pool_bogus": (_set(["config", "vision", "pool"], "bogus"), 2, "vision.pool"),
    "std_zero": (_set(["config", "preprocess", "std"], [0, 1, 1]), 2, "preprocess.std"),
    "ln_pre_str": (_set(["config", "vision", "ln_pre"], "yes"), 2, "vision.ln_pre"),
    "no_config": (_drop("config"), 1, "no \"config\""),
    "vision_null": (_set(["config", "vision"], None), 2, "vision must be"),
    "config_list": (_set(["config"], [1, 2]), 1, "no \"config\""),
    "unknown_key": (_set(["config", "vision", "widht"], 64), 2, "unknown"),
    "shape_mismatch": (_set(["config", "vision", "width"], 32), 1, "shapes"),
    "version_str": (_set(["format_version"], "2"), 1, "format_version"),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_ckpt") / "good"
    create_model("tiny").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def cases(ckpt, tmp_path_factory):
    """{name: (directory, exit code, words)} for every broken checkpoint."""
    root = tmp_path_factory.mktemp("cases")
    good = json.loads((ckpt / "config.json").read_text())
    out = {}
    for name, (change, code, words) in CONFIG_CASES.items():
        d = root / name
        shutil.copytree(ckpt, d)
        meta = json.loads(json.dumps(good))
        change(meta)
        (d / "config.json").write_text(json.dumps(meta))
        out[name] = (d, code, words)
    d = root / "invalid_json"
    shutil.copytree(ckpt, d)
    (d / "config.json").write_text("{not json")
    out["invalid_json"] = (d, 1, "not valid JSON")
    d = root / "truncated_safetensors"
    shutil.copytree(ckpt, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    out["truncated_safetensors"] = (d, 1, "not a valid safetensors")
    d = root / "pickle_as_safetensors"
    shutil.copytree(ckpt, d)
    torch.save({"visual.conv.weight": torch.zeros(2)}, d / "model.safetensors")
    out["pickle_as_safetensors"] = (d, 1, "renamed")
    d = root / "no_weights"
    shutil.copytree(ckpt, d)
    (d / "model.safetensors").unlink()
    out["no_weights"] = (d, 1, "no model.safetensors")
    return out


def test_every_broken_checkpoint_is_one_line_and_allocates_nothing(cases):
    results, peak = embed_each_in_child({name: str(d) for name, (d, _, _) in cases.items()})
    assert peak < 1 * GB, f"peak RSS {peak / GB:.2f} GB"
    for name, (_, code, words) in cases.items():
        rc, err = results[name]
        lines = err.strip().splitlines()
        assert rc == code and len(lines) == 1 and words in lines[0], (name, rc, err)
        assert "Traceback" not in err


def test_the_good_checkpoint_still_loads(ckpt, capsys):
    assert main(["embed", "--model", str(ckpt), "--text", "hi"]) == 0
    assert "dim=64" in capsys.readouterr().out


def test_parameter_count_is_exact_and_bounded():
    for overrides in ({"vision": {"stem": "conv", "pool": "map"}, "text": {"proj_bias": True}},
                      {"vision": {"pool": "cls", "patch_bias": True, "ln_pre": False, "proj": False, "width": 64},
                       "logit_bias_init": -10.0},
                      {"vision": {"layers": 0, "mlp_ratio": 2.5}, "text": {"layers": 3, "proj": False}}):
        m = create_model("tiny", **overrides)
        assert count_parameters(m.config) == sum(p.numel() for p in m.parameters()), overrides
    with pytest.raises(UsageError, match="parameters"):
        get_model_config("ViT-L-14", text={"vocab_size": MAX_PARAMETERS // 768 + 1})
    with pytest.raises(UsageError, match="too many parameters, over the 20 B limit"):  # no tensor of it can exist
        get_model_config("tiny", text={"vocab_size": 2**62})


def test_configs_validate_on_every_path():
    with pytest.raises(UsageError, match="vision.heads"):
        create_model("tiny", vision={"heads": 0})
    with pytest.raises(UsageError, match="text.eos_token_id"):
        CLIPConfig.from_dict({"text": {"pool": "eos"}})
    with pytest.raises(UsageError, match="text.pad_token_id"):
        get_model_config("tiny", text={"pad_token_id": 5000})
    cfg = get_model_config("tiny")
    assert CLIPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # JSON lists become tuples again


# ---- OpenAI's TorchScript archives ------------------------------------------------------------------

def _openai_like_jit(path, heads: int = 2):
    """A TorchScript archive laid out like OpenAI's official .pt: nested modules whose parameters carry
    OpenAI's names, fp16 weights, int attributes (input_resolution, ...) and a causal-mask tensor attribute
    (attn_mask) on the text blocks, which is not a weight."""
    torch.manual_seed(0)
    m = create_model("tiny", vision={"pool": "cls", "act": "quick_gelu", "width": 128, "heads": heads},
                     text={"act": "quick_gelu", "width": 128, "heads": heads})
    sd = state_to_openai(m.state_dict(), m.config)

    class Node(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    for k, v in sd.items():
        *parents, leaf = k.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, Node())
            mod = getattr(mod, p)
        mod.register_parameter(leaf, torch.nn.Parameter(v.half(), requires_grad=False))
    for i in range(2):
        root.transformer.resblocks.get_submodule(str(i)).attn_mask = torch.full((32, 32), float("-inf")).triu(1)
    root.input_resolution, root.context_length, root.vocab_size = 32, 32, 1024
    torch.jit.script(root).save(str(path))
    return sd


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_openai_torchscript_pt_loads_without_running_code(tmp_path):
    sd = _openai_like_jit(tmp_path / "ViT-tiny.pt")
    default_tokenizer().save(tmp_path)  # a tokenizer beside the weights (without one the load is refused)
    with zipfile.ZipFile(tmp_path / "ViT-tiny.pt") as z:
        assert any("/code/" in n for n in z.namelist())  # really a TorchScript archive
    with pytest.warns(UserWarning, match="heads guessed"):
        model = load_model(str(tmp_path / "ViT-tiny.pt"))  # no trust_pickle: no code runs
    ref_file = tmp_path / "same.safetensors"
    save_file({k: v.half().float() for k, v in sd.items()}, str(ref_file))
    with pytest.warns(UserWarning):
        ref = load_model(str(ref_file))
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 1000, (2, 10))
    ids[:, 6] = 1023
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), ref.encode_image(pixels))
        assert torch.equal(model.encode_text(ids), ref.encode_text(ids))


def _evil_zip(path, marker):
    """A TorchScript-shaped zip whose data.pkl would run a shell command if unpickled naively."""
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"visual.conv1.weight": Evil()}, protocol=2))
        z.writestr("evil/code/__torch__.py", "")
        z.writestr("evil/version", "3\n")


def test_malicious_archives_and_pickles_are_one_line_refusals(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    _evil_zip(tmp_path / "evil.pt", marker)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(tmp_path / "evil_legacy.pt", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    torch.save({"w": Evil()}, tmp_path / "evil_zip.pt")
    with pytest.raises(ClipforgeError, match="refusing global posix.system|refusing global os.system"):
        load_model(str(tmp_path / "evil.pt"))
    cases = [(["--model", str(tmp_path / "evil.pt")], 1, "refusing global"),
             (["--model", str(tmp_path / "evil_legacy.pt"), "--trust-pickle"], 1, "weights-only"),
             (["--model", str(tmp_path / "evil_zip.pt"), "--trust-pickle"], 1, "weights-only"),
             (["--model", "tiny", "--weights", str(tmp_path / "evil_zip.pt"), "--trust-pickle"], 1, "weights-only"),
             (["--model", str(tmp_path / "evil_zip.pt")], 2, "refusing to load pickled")]
    for args, code, words in cases:
        rc = main(["embed", *args, "--text", "hi"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == code and len(err) == 1 and words in err[0], (args, rc, err)
    assert not marker.exists()


def test_head_counts_are_never_guessed_silently_and_can_be_given(tmp_path, capsys):
    from test_convert_openai import reference_openai

    torch.manual_seed(1)
    m = create_model("tiny", vision={"pool": "cls", "act": "quick_gelu", "width": 128, "heads": 4},
                     text={"act": "quick_gelu", "width": 128, "heads": 4})  # head width 32, not OpenAI's 64
    sd = state_to_openai(m.state_dict(), m.config)
    f = tmp_path / "heads4.safetensors"
    save_file(sd, str(f))
    default_tokenizer().save(tmp_path)  # a tokenizer beside the weights (without one the load is refused)
    with pytest.warns(UserWarning, match="heads guessed as width 128 // 64 = 2"):
        guessed = load_model(str(f))
    given = load_model(str(f), vision_heads=4, text_heads=4)
    assert (guessed.config.vision.heads, given.config.vision.heads, given.config.text.heads) == (2, 4, 4)
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 1000, (2, 9))
    ids[:, 5] = 1023
    with torch.no_grad():
        img, txt, _ = reference_openai(sd, pixels, ids, 4, 4)
        assert (given.encode_image(pixels, normalize=False) - img).abs().max() < 1e-5
        assert (given.encode_text(ids, normalize=False) - txt).abs().max() < 1e-5
        assert (guessed.encode_image(pixels, normalize=False) - img).abs().max() > 1e-3  # the guess was wrong
    assert main(["embed", "--model", str(f), "--heads", "4,4", "--text", "hi"]) == 0
    assert "heads guessed" not in capsys.readouterr().err
    assert main(["embed", "--model", str(f), "--heads", "four", "--text", "hi"]) == 2
    with pytest.raises(UsageError, match="apply to OpenAI-layout"):
        load_model("tiny", vision_heads=4)
    from clipforge.models.convert.openai import infer_config

    odd = create_model("tiny", vision={"pool": "cls", "width": 96, "heads": 2})
    with pytest.raises(ClipforgeError, match="not a multiple of 64"):  # no rule to guess by: ask
        infer_config(state_to_openai(odd.state_dict(), odd.config))
    assert infer_config(state_to_openai(odd.state_dict(), odd.config), vision_heads=2, text_heads=1).vision.heads == 2
