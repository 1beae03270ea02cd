"""Configs, checkpoints and adapters from files clipforge did not write (issue #33): every fault is one line, and
what would allocate is priced and checked first — a config against the memory budget, weight files against
the shapes their config gives (from the safetensors header alone), adapters against both — so a 1.3 KB
config.json for 17.7 B parameters, a 1.6 B config with 1 MB of weights or an adapter of rank 10^6 cost
nothing. Counts in a training config are bounded; NaN / infinite weights are refused on load.

The loads that must allocate nothing run in one child process under a 6 GB address-space limit, whose peak
resident memory (VmHWM) must stay under 1 GB."""
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipforge.cli import main
from peak_rss import embed_each_in_child
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models import budget, create_model, load_model
from clipforge.models.adapter import save_adapter
from clipforge.models.config import CLIPConfig
from clipforge.models.param_count import count_parameters
from clipforge.models.factory import expected_state_shapes
from clipforge.models.lora import MAX_RANK, LoRAConfig, apply_lora
from clipforge.train.config import load_config
from clipforge.train.config_checks import max_threads, max_workers

GB = 2**30


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust") / "base"
    create_model("tiny").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def adapter(base):
    m = load_model(str(base))
    apply_lora(m, LoRAConfig(rank=4))
    return save_adapter(m, base.parent / "adapter", base_model=str(base))


def _copy(src, dst, config=None, meta_file="config.json"):
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    if config is not None:
        (dst / meta_file).write_text(config if isinstance(config, str) else json.dumps(config))
    return dst


def _sized(base, dst, width, layers):
    """`base` with a config.json describing a model of both towers `width` x `layers` (its weights unchanged)."""
    meta = json.loads((base / "config.json").read_text())
    for tower in ("vision", "text"):
        meta["config"][tower].update(width=width, layers=layers, heads=width // 128)
    return _copy(base, dst, meta)


def _adapter_variant(adapter, dst, change=None, weights=None):
    meta = json.loads((adapter / "adapter_config.json").read_text())
    if change is not None:
        change(meta, dst)
    _copy(adapter, dst, meta, "adapter_config.json")
    if weights is not None:
        (dst / "adapter.safetensors").write_bytes(weights)
    return dst


def _rank(r):
    return lambda meta, d: (meta["lora"].__setitem__("rank", r))


def _poisoned(src, dst, weights_file, key_of, value):
    _copy(src, dst)
    state = load_file(str(dst / weights_file))
    key = key_of(state)
    state[key] = state[key].clone()
    state[key].view(-1)[3] = value
    save_file(state, str(dst / weights_file))
    return dst, key


@pytest.fixture(scope="module")
def cases(base, adapter):
    """name -> (model reference, exit code, words the one line must contain)."""
    root = base.parent
    out = {
        "config_list": (_copy(base, root / "config_list", "[1, 2, 3]"), 1, "not a JSON object"),
        "config_deep": (_copy(base, root / "config_deep", "[" * 100_000 + "]" * 100_000), 1, "nested too deeply"),
        # 17.7 B parameters (70.9 GB in float32) in a 1.3 KB config: refused by the memory budget
        "config_17b": (_sized(base, root / "config_17b", 4096, 44), 1, "70.9 GB"),
        # 0.7 B parameters (fits the child's 6 GB) over the tiny model's 1 MB of weights: refused from the
        # safetensors header (the 1.6 B case of the issue: test_weights_are_checked_against_the_header_first)
        "config_0b7_small_weights": (_sized(base, root / "config_0b7", 1536, 12), 1,
                                     "do not match the model's shapes"),
        "adapter_rank_1e100": (_adapter_variant(adapter, root / "a_rank_1e100", _rank(10**100)), 1, "lora.rank"),
        "adapter_rank_1e6": (_adapter_variant(adapter, root / "a_rank_1e6", _rank(10**6)), 1, "lora.rank"),
        # a rank within bounds whose file holds rank-4 factors: the header says so before anything is allocated
        "adapter_rank_vs_header": (_adapter_variant(adapter, root / "a_rank_hdr", _rank(MAX_RANK)), 1,
                                   "do not match the model's shapes"),
        "adapter_pickle": (_adapter_variant(adapter, root / "a_pickle", weights=pickle.dumps({"lora_A": 1})), 1,
                           "looks like a pickle"),
        "adapter_1gb_header": (_adapter_variant(adapter, root / "a_1gb", weights=struct.pack("<Q", GB) + b"{}"), 1,
                               "not a valid safetensors file"),
        "adapter_names_itself": (_adapter_variant(adapter, root / "a_self",
                                                  lambda meta, d: meta.__setitem__("base_model", str(d))),
                                 1, "names itself as its base_model"),
        "adapter_cycle": (_adapter_variant(adapter, root / "a_cycle_1",
                                           lambda meta, d: meta.__setitem__("base_model", str(root / "a_cycle_2"))),
                          1, "another adapter"),
    }
    _adapter_variant(adapter, root / "a_cycle_2", lambda meta, d: meta.__setitem__("base_model", str(root / "a_cycle_1")))
    return {name: (str(path), code, words) for name, (path, code, words) in out.items()}


def test_hostile_configs_and_adapters_are_one_line_and_allocate_nothing(cases):
    results, peak = embed_each_in_child({name: ref for name, (ref, _, _) in cases.items()})
    assert peak < 1 * GB, f"peak RSS {peak / GB:.2f} GB"  # the 17.7 B config reached 8.4 GB before, 1.6 B 6.5 GB
    for name, (_, code, words) in cases.items():
        rc, err = results[name]
        lines = err.strip().splitlines()
        assert rc == code and len(lines) == 1 and words in lines[0], (name, rc, err)
        assert "Traceback" not in err and "frame #" not in err


def test_weights_are_checked_against_the_header_first(base, tmp_path, monkeypatch):
    """The issue's 1.6 B-parameter config over 1 MB of weights allocated 6.7 GB for 30 s before "weights do
    not match": now the header refuses it and no model is built (a regression raises here, allocating nothing)."""
    import clipforge.models.loading as loading

    d = _sized(base, tmp_path / "b16", 2048, 16)
    assert 1.6e9 < count_parameters(CLIPConfig.from_dict(json.loads((d / "config.json").read_text())["config"]))
    monkeypatch.setattr(budget, "available_memory", lambda: (None, ""))  # whatever this machine has
    monkeypatch.setattr(loading, "build_model", lambda *a, **k: pytest.fail("built before checking the weights"))
    with pytest.raises(ClipforgeError, match=r"weights in .* do not match the model's shapes \(stored vs config\): "
                                             r"text.ln_final.bias \(64,\) vs \(2048,\).*\(\+\d+ more\)") as e:
        load_model(str(d))
    assert "\n" not in str(e.value)


def test_the_17b_config_states_what_it_needs(base, tmp_path):
    d = _sized(base, tmp_path / "big", 4096, 44)
    meta = json.loads((d / "config.json").read_text())
    assert len(json.dumps(meta)) < 1400 and count_parameters(CLIPConfig.from_dict(meta["config"])) > 17.7e9
    with pytest.raises(ClipforgeError, match=r"17\.73 B parameters\) needs 70\.9 GB of memory, but only") as e:
        load_model(str(d))
    assert "\n" not in str(e.value) and "--" not in str(e.value)


def test_memory_budget_refuses_models_and_adapters_before_allocating(base, adapter, monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda: (200_000, "a test budget"))
    for build in (lambda: create_model("tiny"), lambda: load_model(str(base))):
        with pytest.raises(ClipforgeError, match=r"needs \d\.\d MB of memory, but only 0\.2 MB .*by a test budget"):
            build()
    monkeypatch.setattr(budget, "available_memory", lambda: (3 << 20, "a test budget"))
    model = create_model("tiny")  # 1.8 MB fits
    with pytest.raises(ClipforgeError, match="rank-4096 adapter on 8 layers"):
        apply_lora(model, LoRAConfig(rank=4096))
    assert not any("lora" in k for k in model.state_dict())  # nothing was wrapped
    monkeypatch.setattr(budget, "available_memory", lambda: (None, ""))  # nothing says: no limit
    assert type(load_model(f"{base}+{adapter}")).__name__ == "CLIPModel"


def test_available_memory_takes_the_address_space_limit():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from clipforge.models.budget import available_memory; print(*available_memory(), sep='|')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    have, source = out.stdout.strip().split("|")
    assert 0 < int(have) < 3 << 30 and "RLIMIT_AS" in source, out


def test_meta_build_gives_the_built_models_state_shapes():
    for name, kw in (("tiny", {}), ("tiny-resnet", {}), ("tiny", {"vision": {"pool": "map", "stem": "conv"}})):
        m = create_model(name, **kw)
        assert expected_state_shapes(m.config) == {k: tuple(v.shape) for k, v in m.state_dict().items()}


def test_registered_weights_are_checked_against_the_header_before_building(base, tmp_path, monkeypatch):
    built = []
    import clipforge.models.loading as loading

    monkeypatch.setattr(loading, "create_model", lambda *a, **k: built.append(a) or create_model(*a, **k))
    with pytest.raises(ClipforgeError, match="do not match the model's shapes"):
        load_model("tiny", weights=base / "model.safetensors", vision={"width": 128})
    assert not built
    assert load_model("tiny", weights=base / "model.safetensors") is not None and built


# ---- NaN / inf weights ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_model_weights_are_refused(base, tmp_path, value):
    d, key = _poisoned(base, tmp_path / "nan", "model.safetensors", lambda s: "visual.proj.weight", value)
    with pytest.raises(ClipforgeError, match=rf"tensor {key} holds {value}") as e:
        load_model(str(d))
    assert "\n" not in str(e.value)
    with pytest.raises(ClipforgeError, match=rf"tensor {key} holds"):
        load_model("tiny", weights=d / "model.safetensors")


def test_non_finite_adapter_weights_are_refused(base, adapter, tmp_path, capsys):
    d, key = _poisoned(adapter, tmp_path / "nan_adapter", "adapter.safetensors",
                       lambda s: sorted(k for k in s if k.endswith("lora_B"))[0], float("nan"))
    rc = main(["embed", "--model", f"{base}+{d}", "--text", "hi"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and f"tensor {key} holds nan" in err


def test_a_good_adapter_still_loads_onto_the_base_it_names(base, adapter):
    m = load_model(str(adapter))  # the base from its config: one level, never a chain of adapters
    assert m.adapter_base == str(base)


@pytest.mark.parametrize("lora, words", [
    ({"rank": 10**100}, "lora.rank must be an integer in [1, 65536], got 10000000000000000000... (101 characters)"),
    ({"alpha": 10**400}, "lora.alpha must be a number > 0"),
    ({"targets": 5}, "lora.targets must be a list"),
    ({"layers": [10**100]}, "lora.layers must be block indices"),
    ({"comp_k": 10**7, "method": "comp-lora"}, "lora.comp_k must be an integer in"),
])
def test_adapter_options_out_of_range_name_the_file(base, adapter, tmp_path, lora, words):
    d = _adapter_variant(adapter, tmp_path / "bad", lambda meta, _: meta["lora"].update(lora))
    with pytest.raises(ClipforgeError) as e:
        load_model(f"{base}+{d}")
    assert words in str(e.value) and "adapter_config.json" in str(e.value) and "\n" not in str(e.value)


# ---- training config bounds -------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    (f"run.steps={10**100}", "run.steps"), ("run.steps=1000000001", "run.steps"),
    ("data.workers=100000", "data.workers"), ("run.threads=100000", "run.threads"),
    ("data.batch_size=10000000", "data.batch_size"), (f"schedule.warmup_steps={10**12}", "schedule.warmup_steps"),
    ("run.epochs=1e300", "run.epochs"), (f"run.log_every={10**10}", "run.log_every"),
    (f"run.eval_every={10**10}", "run.eval_every"), (f"run.checkpoint_every={10**10}", "run.checkpoint_every"),
    ("run.keep_checkpoints=1000000", "run.keep_checkpoints"), ("run.gradcache_sub_batch=10000000", "run.gradcache_sub_batch"),
    (f"model.tokenizer_vocab_size={10**9}", "model.tokenizer_vocab_size"),
    ("model.lock_text_unlocked_groups=1000000", "model.lock_text_unlocked_groups"),
    (f"adapt.rank={10**6}", "adapt.rank"),
])
def test_every_count_in_a_training_config_is_bounded(override, key):
    steps = [] if override.startswith(("run.steps", "run.epochs")) else ["run.steps=1"]
    extra = ["adapt.method=lora"] if key.startswith("adapt.") else []
    with pytest.raises(UsageError) as e:
        load_config(None, ["data.train=x", override, *steps, *extra])
    msg = str(e.value).replace("`", "")
    assert msg.startswith(key) and "\n" not in msg and len(msg) < 300, msg


def test_bounds_follow_the_machine_and_sane_values_pass():
    cpus = os.cpu_count() or 1
    assert max_workers() == max(64, 4 * cpus) and max_threads() == 4 * cpus
    cfg = load_config(None, ["data.train=x", "run.steps=1000000000", f"data.workers={max_workers()}",
                             f"run.threads={max_threads()}", "data.batch_size=65536"])
    assert cfg.run.steps == 10**9


def test_run_threads_100000_is_one_cli_line_not_a_memory_error(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "run"), "--set", "data.train=jsonl:nowhere.jsonl", "--set",
               "run.steps=1", "--set", "run.threads=100000"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "run.threads must be an integer in [1, " in err
    assert not (tmp_path / "run").exists()


def test_a_hostile_trainer_state_is_refused_without_running_it(tmp_path):
    """Truncated and garbage trainer_state.pt files fall back to the previous checkpoint (test_disk_faults); a
    pickle that would run a command is the same one-line refusal, and the command never runs."""
    from clipforge.train.state import load_trainer_state

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"step": 1, "optimizer": Hostile()}, tmp_path / "trainer_state.pt")
    with pytest.raises(ClipforgeError, match="cannot read the trainer state") as e:
        load_trainer_state(tmp_path)
    assert "\n" not in str(e.value) and not (tmp_path / "PWNED").exists()
