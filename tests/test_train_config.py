import math

import pytest

from clipforge.errors import UsageError
from clipforge.train.config import apply_overrides, config_from_dict, load_config
from clipforge.train.schedule import lr_at


def test_unknown_keys_listed(tmp_path):
    with pytest.raises(UsageError, match=r"unknown key\(s\) \['lrr'\] in section 'optim'; valid keys: lr"):
        config_from_dict({"optim": {"lrr": 1}})
    with pytest.raises(UsageError, match="valid sections: model, data"):
        config_from_dict({"optimizer": {}})


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {train: 'jsonl:x.jsonl'}\nrun: {steps: 10}\n")
    cfg = load_config(p, ["optim.lr=1e-3", "optim.betas=[0.8, 0.9]", "optim.grad_clip=null",
                          "model.overrides.vision.layers=3", "run.precision=bf16"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == [0.8, 0.9] and cfg.optim.grad_clip is None
    assert cfg.model.overrides == {"vision": {"layers": 3}} and cfg.run.precision == "bf16"
    with pytest.raises(UsageError, match="section.key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(UsageError, match="must name a section"):
        apply_overrides({}, ["lr=1"])


def test_validation_messages(tmp_path):
    with pytest.raises(UsageError, match="data.train is required"):
        load_config(None, ["run.steps=1"])
    with pytest.raises(UsageError, match="exactly one of run.steps and run.epochs"):
        load_config(None, ["data.train=x", "run.steps=1", "run.epochs=1"])
    with pytest.raises(UsageError, match="run.precision"):
        load_config(None, ["data.train=x", "run.steps=1", "run.precision=fp8"])
    with pytest.raises(UsageError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_packaged_demo_config_loads_by_name(tmp_path, capsys):
    """A pip-installed user has no repo checkout: `--config demo-digits` names the packaged config."""
    from clipforge.cli import main
    from clipforge.train.config import packaged_configs

    assert "demo-digits" in packaged_configs()
    cfg = load_config("demo-digits")
    assert cfg.model.name == "tiny-resnet" and cfg.run.steps > 0
    assert load_config("demo-digits.yaml") == cfg
    # a file of that name in the working directory wins over the packaged one
    (tmp_path / "demo-digits.yaml").write_text("model: {name: tiny}\ndata: {train: x}\nrun: {steps: 3}\n")
    assert load_config(tmp_path / "demo-digits.yaml").run.steps == 3
    assert main(["train", "--config", "demo-digits", "--out", str(tmp_path / "r"), "--print-config"]) == 0
    assert "tokenizer_vocab_size: 1024" in capsys.readouterr().out
    with pytest.raises(UsageError, match="packaged configs: .*demo-digits"):
        load_config("no-such-config")


def test_schedule_warmup_then_cosine():
    kw = dict(base_lr=1.0, total_steps=110, warmup_steps=10)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.5)  # half way through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(50, name="constant", **kw) == 1.0
    assert lr_at(110, min_lr=0.1, **kw) == pytest.approx(0.1)


def test_values_coerced_or_rejected():
    cfg = config_from_dict({"optim": {"lr": "1e-3"}, "run": {"steps": 5.0}})
    assert cfg.optim.lr == 1e-3 and cfg.run.steps == 5
    with pytest.raises(UsageError, match=r"run.steps: expected int, got 'ten'"):
        config_from_dict({"run": {"steps": "ten"}})
    with pytest.raises(UsageError, match="model.lock_image: expected bool"):
        config_from_dict({"model": {"lock_image": "yes please"}})


@pytest.mark.parametrize("override, key", [
    ("optim.lr=-1", "optim.lr"), ("optim.lr=0", "optim.lr"), ("optim.lr=.nan", "optim.lr"),
    ('optim.betas="0.9"', "optim.betas"), ("optim.betas=[1.5,-1]", "optim.betas"), ("optim.betas=[0.9]", "optim.betas"),
    ("optim.betas=[0.9, true]", "optim.betas"), ("optim.eps=0", "optim.eps"), ("optim.grad_clip=-1", "optim.grad_clip"),
    ("data.workers=-1", "data.workers"), ("run.steps=0", "run.steps"), ("run.steps=-5", "run.steps"),
    ("run.epochs=-1", "run.epochs"), ("run.epochs=0", "run.epochs"), ("schedule.warmup_steps=-1", "schedule.warmup_steps"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"), ("schedule.min_lr=1", "schedule.min_lr"),
    ("run.seed=-1", "run.seed"), ("run.threads=0", "run.threads"), ("run.eval_every=-1", "run.eval_every"),
    ("model.tokenizer_vocab_size=100", "model.tokenizer_vocab_size"), ("model.overrides=3", "model.overrides"),
])
def test_out_of_range_values_name_their_key(override, key):
    steps = [] if override.startswith(("run.steps", "run.epochs")) else ["run.steps=1"]
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        load_config(None, ["data.train=x", override, *steps])


def test_train_cli_range_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    """The issue's examples: each a one-line exit 2, none trains or writes final/."""
    from clipforge.cli import main

    for override in ("optim.lr=-1", 'optim.betas="0.9"', "optim.betas=[1.5,-1]", "data.workers=-1", "run.steps=0",
                     "run.steps=-5", "run.epochs=-1", "schedule.warmup_steps=-3", "optim.weight_decay=-1"):
        steps = [] if override.startswith(("run.steps", "run.epochs")) else ["--set", "run.steps=1"]
        out = tmp_path / override.split("=")[0]
        rc = main(["train", "--out", str(out), "--set", "data.train=files:nowhere", "--set", override, *steps])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and override.split("=")[0] in err[0], (override, err)
        assert not out.exists()


def _laughs(levels: int = 6, indent: str = "") -> str:
    """A "billion laughs" YAML mapping: each level an alias list of ten of the previous (10**levels strings).
    Six levels (a million values) are over the bound yet cheap to expand, so a regression fails fast here
    instead of hanging the suite; the nine-level file behaves the same (checked by hand: one line, exit 2)."""
    lines = [f'{indent}l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


HOSTILE_YAML = {  # name -> (YAML text, words the one-line error must hold)
    "billion_laughs_top": (_laughs() + "data: {train: x}\nrun: {steps: 1}\n", "expand to over 100,000 values"),
    "billion_laughs_in_a_section": ("model:\n  overrides:\n" + _laughs(indent="    ") + "data: {train: x}\n",
                                    "expand to over 100,000 values"),
    "self_reference": ("model: {overrides: &a {x: [*a]}}\ndata: {train: x}\n", "refers to the list or mapping"),
    "deep_nesting": ("data: {train: x, val_options: {v: " + "[" * 3000 + "]" * 3000 + "}}\n", "nested too deeply"),
    "nesting_over_the_depth_limit": ("data: {val_options: {v: " + "[" * 70 + "]" * 70 + "}}\n", "nested too deeply"),
    "invalid": ("data: {train: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", HOSTILE_YAML)
def test_hostile_yaml_is_refused_before_it_is_expanded(tmp_path, name):
    """Aliases that expand to a billion values, refer to themselves or nest thousands deep are one-line
    UsageErrors (from a file and from an override value) instead of a hang, a memory blow-up or a traceback."""
    text, words = HOSTILE_YAML[name]
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UsageError, match=words) as e:
        load_config(p, ["run.steps=1"])
    assert "\n" not in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("value, words", [
    ("{" + ", ".join(_laughs().strip().splitlines()) + "}", "expand to over 100,000 values"),
    ("&a {x: [*a]}", "refers to the list or mapping"),
    ("[" * 3000 + "]" * 3000, "nested too deeply"),
])
def test_hostile_yaml_in_an_override_value(value, words):
    with pytest.raises(UsageError, match=words) as e:
        load_config(None, ["data.train=x", "run.steps=1", f"model.overrides={value}"])
    assert "\n" not in str(e.value) and "overrides" in str(e.value)


def test_aliases_within_the_bound_still_work(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {train: x, val_templates: &t ['a photo of {}.', 'a drawing of {}.'],\n"
                 "       train_options: {templates: *t, more: *t}}\nrun: {steps: 1}\n")
    cfg = load_config(p)
    assert cfg.data.train_options == {"templates": cfg.data.val_templates, "more": cfg.data.val_templates}
    assert cfg.data.val_templates == ["a photo of {}.", "a drawing of {}."]


def test_train_cli_billion_laughs_is_one_line_and_writes_nothing(tmp_path, capsys):
    from clipforge.cli import main

    (tmp_path / "bomb.yaml").write_text(HOSTILE_YAML["billion_laughs_top"][0])
    rc = main(["train", "--config", str(tmp_path / "bomb.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "100,000 values" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, words", [
    ("optim: {lr: 0.1}\nrun: {steps: 1}\noptim: {weight_decay: 0.5}\ndata: {train: x}\n",
     r"duplicate key 'optim'.* at line 3"),
    ("data: {train: x, train: y}\nrun: {steps: 1}\n", r"duplicate key 'train'"),
    ("run: {steps: " + "9" * 5000 + "}\ndata: {train: x}\n", "more than 4,300 digits"),
    ("run: {steps: 1\ndata: [\n", r"not valid YAML .* at line \d+\)"),
])
def test_silently_wrong_yaml_is_refused_in_one_line(tmp_path, text, words):
    """A key given twice would keep only the last one (a second `optim:` replaces the whole first section);
    a 5000-digit number would surface Python's `sys.set_int_max_str_digits` hint: both are one-line errors."""
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(UsageError, match=words) as e:
        load_config(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value) and "sys." not in str(e.value)


def test_merge_keys_may_still_be_overridden():
    from clipforge.train.config import parse_yaml

    text = "x_base: &b {lr: 0.1, weight_decay: 0.2}\noptim: {<<: *b, lr: 0.5}\n"
    assert parse_yaml(text, "c.yaml")["optim"] == {"lr": 0.5, "weight_decay": 0.2}


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b"run: {steps: 1}\n" + b"#" * (1 << 20)), "over 1 MB"),
    (lambda p: p.write_bytes(b"data: {train: caf\xe9}\n"), "not UTF-8 text"),
])
def test_config_files_are_capped_and_must_be_text(tmp_path, make, words):
    p = tmp_path / "c.yaml"
    make(p)
    with pytest.raises(UsageError, match=words) as e:
        load_config(p)
    assert "\n" not in str(e.value)
