"""timm image towers where timm does not import (this project's venv: timm needs torchvision, which does not load
beside torch 2.13): the config validates, counts, round-trips and is refused in one line when built; export
names the tower it cannot write. The towers themselves are tested where timm imports (tests/test_timm_tower.py).
Also: `preprocess.crop_pct` (timm's eval crop), which needs no timm."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipforge.errors import ClipforgeError, UsageError
from clipforge.models import CLIPConfig, TextConfig, TimmConfig, build_model, load_model
from clipforge.models.checkpoint import FORMAT, FORMAT_VERSION
from clipforge.models.config import PreprocessConfig, vision_config
from clipforge.models.convert.export import export_model
from clipforge.models.param_count import parameter_counts
from clipforge.models.timm_tower import timm_available
from clipforge.models.transforms import EvalTransform

TEXT = TextConfig(width=32, layers=1, heads=2, vocab_size=1000, context_length=8)
no_timm = pytest.mark.skipif(timm_available(), reason="timm imports here: tests/test_timm_tower.py covers it")


def _cfg(**vision) -> CLIPConfig:
    return CLIPConfig(embed_dim=16, vision=TimmConfig(**vision), text=TEXT)


def test_timm_config_round_trips_through_json():
    cfg = _cfg(model="convnext_atto", pool="max", head="mlp", head_hidden=64, image_size=160, feature_dim=320,
               pretrained="/weights/convnext.safetensors")
    back = CLIPConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.vision, TimmConfig) and back.vision.arch == "timm"
    assert vision_config(arch="timm", model="resnet18") == TimmConfig(model="resnet18")


@pytest.mark.parametrize("key, value, words", [
    ("model", "resnet18; rm -rf", "vision.model"), ("model", "", "vision.model"), ("pool", 3, "vision.pool"),
    ("head", "conv", "vision.head"), ("image_size", 8, "vision.image_size"),
    ("feature_dim", -1, "vision.feature_dim"), ("timm_preprocess", "yes", "vision.timm_preprocess"),
    ("pretrained", "  ", "vision.pretrained"),
])
def test_bad_timm_config_is_one_line_naming_the_key(key, value, words):
    with pytest.raises(UsageError) as e:
        _cfg(**{key: value})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unknown_vision_key_lists_the_timm_keys():
    with pytest.raises(UsageError, match="model") as e:
        CLIPConfig.from_dict({"vision": {"arch": "timm", "modle": "resnet18"}})
    assert "modle" in str(e.value)


def test_counted_without_timm_as_its_head_alone():
    counts = parameter_counts(_cfg(model="resnet50", feature_dim=2048))
    if timm_available():
        assert counts["vision"] > 23_000_000  # the trunk itself
    else:
        assert counts["vision"] == 2048 * 16 + 16  # the linear head: nothing else can be sized without timm


@no_timm
def test_building_without_timm_is_one_line_naming_the_extra():
    with pytest.raises(ClipforgeError) as e:
        build_model(_cfg(model="resnet18"))
    msg = str(e.value)
    assert "clipforge[timm]" in msg and "torchvision" in msg and "\n" not in msg


@no_timm
def test_loading_a_timm_checkpoint_without_timm_says_so(tmp_path):
    cfg = _cfg(model="resnet18", feature_dim=512, image_size=224)
    (tmp_path / "config.json").write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                      "config": cfg.to_dict()}))
    save_file({"visual.model.conv1.weight": torch.zeros(64, 3, 7, 7)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ClipforgeError, match=r"clipforge\[timm\]") as e:
        load_model(str(tmp_path))
    assert "\n" not in str(e.value)


class _Stub(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.lin = torch.nn.Linear(2, 2)


@pytest.mark.parametrize("to", ["hf", "open_clip"])
def test_export_refuses_a_timm_tower_by_name(tmp_path, to):
    with pytest.raises(UsageError) as e:
        export_model(_Stub(_cfg(model="resnet18", feature_dim=512)), to, tmp_path / "out")
    assert "timm image tower (resnet18)" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_crop_pct_resizes_then_crops_the_centre_as_timm():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8))
    zero = dict(mean=(0, 0, 0), std=(1, 1, 1))
    out = EvalTransform(64, PreprocessConfig(**zero, crop_pct=0.875))(img)
    scale = math.floor(64 / 0.875)  # 73: shortest side, then the centre 64 x 64 (torchvision's offsets)
    r = img.resize((int(scale * 130 / 90), scale), Image.BICUBIC)
    left, top = int(round((r.size[0] - 64) / 2.0)), int(round((r.size[1] - 64) / 2.0))
    want = np.asarray(r.crop((left, top, left + 64, top + 64)), np.float32).transpose(2, 0, 1) / 255.0
    assert out.shape == (3, 64, 64) and np.abs(out.numpy() - want).max() == 0.0
    full = EvalTransform(64, PreprocessConfig(**zero))(img)
    assert np.abs(full.numpy() - out.numpy()).max() > 0.05  # crop_pct changes what is seen
    squash = EvalTransform(64, PreprocessConfig(**zero, crop_pct=0.5, resize_mode="squash"))(img)
    sq = np.asarray(img.resize((128, 128), Image.BICUBIC).crop((32, 32, 96, 96)), np.float32)
    assert np.abs(squash.numpy() - sq.transpose(2, 0, 1) / 255.0).max() == 0.0


@pytest.mark.parametrize("bad", [0, 1.5, -0.2, float("nan")])
def test_bad_crop_pct_is_refused(bad):
    with pytest.raises(UsageError, match="preprocess.crop_pct"):
        PreprocessConfig(crop_pct=bad)
