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
