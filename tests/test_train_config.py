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
    assert cfg.model.name == "tiny" and cfg.run.steps > 0
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
