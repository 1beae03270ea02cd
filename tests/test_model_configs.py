"""Configs as data: one class per vision architecture, stored configs of the single-VisionConfig era still load,
and the checks live in the config (one exception type), not in the towers."""
from __future__ import annotations

import json

import pytest

from clipforge.errors import UsageError
from clipforge.models import create_model, get_model_config
from clipforge.models.config import CLIPConfig, EfficientNetConfig, ResNetConfig, ViTConfig

# Every key the single VisionConfig held (and so every checkpoint written with it stores), at its defaults
UNION = {"image_size": 224, "patch_size": 32, "width": 768, "layers": 12, "heads": 12, "mlp_ratio": 4.0,
         "act": "quick_gelu", "pool": "cls", "ln_pre": True, "norm_first": True, "patch_bias": False,
         "stem": "patch", "proj": True, "proj_bias": False, "ln_eps": 1e-5, "arch": "vit",
         "stage_layers": [1, 1, 1, 1], "variant": "lite0", "pretrained": None, "head": "linear", "head_hidden": 0}


@pytest.mark.parametrize("name, cls", [("tiny", ViTConfig), ("tiny-resnet", ResNetConfig)])
def test_old_union_configs_load_into_their_architecture(name, cls):
    cfg = get_model_config(name)
    old = json.loads(json.dumps(cfg.to_dict()))
    old["vision"] = {**UNION, **old["vision"]}  # as a checkpoint written before the split stores it
    loaded = CLIPConfig.from_dict(old)
    assert type(loaded.vision) is cls and loaded == cfg
    assert set(loaded.to_dict()["vision"]) < set(UNION)  # written back with its own keys only


def test_each_architecture_keeps_only_its_keys():
    assert type(get_model_config("lite0-minilm").vision) is EfficientNetConfig
    v = get_model_config("tiny", vision={"arch": "resnet", "width": 16, "heads": 8}).vision
    assert type(v) is ResNetConfig and not hasattr(v, "patch_size") and v.width == 16
    with pytest.raises(UsageError, match=r"unknown config\.vision key\(s\) \['patch'\]"):
        get_model_config("tiny", vision={"patch": 8})


def test_what_towers_used_to_check_is_a_config_error():
    with pytest.raises(UsageError, match="text.stretched_from"):
        create_model("tiny", text={"stretched_from": 16, "causal": False})
    with pytest.raises(UsageError, match="text.short_positions"):
        get_model_config("tiny", text={"stretched_from": 16, "short_positions": "middle"})
