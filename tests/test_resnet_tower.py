"""The ResNet image tower (`vision.arch: resnet`): config checks, exact parameter count, tokens, training
step, and the HF export that refuses it by name (the shared contract test covers `tiny-resnet` too)."""
from __future__ import annotations

import pytest
import torch

from clipforge.errors import UsageError
from clipforge.models import create_model
from clipforge.models.param_count import count_parameters
from clipforge.models.convert.export import export_model


@pytest.mark.parametrize("overrides", [{}, {"width": 8, "heads": 4, "image_size": 64, "stage_layers": [2, 1, 3, 1]}])
def test_parameter_count_is_exact(overrides):
    model = create_model("tiny-resnet", vision=overrides)
    assert count_parameters(model.config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("bad, key", [({"stage_layers": [1, 1, 1]}, "vision.stage_layers"),
                                      ({"stage_layers": [1, 0, 1, 1]}, "vision.stage_layers"),
                                      ({"width": 15, "heads": 1}, "vision.width"),
                                      ({"image_size": 48}, "vision.image_size"),
                                      ({"heads": 7}, "vision.heads"),
                                      ({"arch": "convnext"}, "vision.arch")])
def test_bad_config_names_the_key(bad, key):
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        create_model("tiny-resnet", vision=bad)


def test_tokens_grid_and_pooled_shapes():
    model = create_model("tiny-resnet", vision={"image_size": 64}).eval()
    out = model.visual(torch.randn(2, 3, 64, 64), return_tokens=True)
    assert out.pooled.shape == (2, 64) and out.tokens.shape == (2, 4, 64)  # (64 / 32)^2 tokens


def test_gradients_reach_the_stem_heads_and_every_block_gate():
    torch.manual_seed(0)
    model = create_model("tiny-resnet").train()
    px, ids = torch.randn(8, 3, 32, 32), model.tokenizer([f"digit {i}" for i in range(8)])
    model(px, ids).logits().logsumexp(-1).sum().backward()
    # each block's last BatchNorm starts at zero (the block is its shortcut), so only the layers inside the
    # residual branch get no gradient at step 0; the BatchNorm's weight (the gate) does, and opens the branch
    branch = (".conv1.", ".bn1.", ".conv2.", ".bn2.", ".conv3.")
    no_grad = [n for n, p in model.visual.named_parameters()
               if not any(b in n for b in branch) and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_grad == []
    assert all(blk.bn3.weight.grad.abs().sum() > 0 for stage in model.visual.stages for blk in stage)


def test_hf_export_refuses_it_by_name_and_names_open_clip(tmp_path):
    # transformers has no ResNet CLIP; open_clip's ModifiedResNet is this tower (tests/test_convert_open_clip_resnet.py)
    with pytest.raises(UsageError, match=r"vision\.arch=resnet.*`to`=open_clip"):
        export_model(create_model("tiny-resnet"), "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_model_returns_inference_mode_so_batchnorm_uses_its_statistics(tmp_path):
    """A loaded checkpoint of a BatchNorm tower embeds an image the same alone and in a batch (train mode would
    normalise each batch by its own statistics: 0.45 apart in the issue's check)."""
    import torch

    from clipforge.models import create_model, load_model

    torch.manual_seed(0)
    m = create_model("tiny-resnet")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    back = load_model(str(m.save_pretrained(tmp_path / "ck")))
    assert not back.training and not any(x.training for x in back.modules())
    x = torch.randn(4, 3, back.config.image_size, back.config.image_size)
    with torch.no_grad():
        assert torch.allclose(back.encode_image(x[:1]), back.encode_image(x)[:1], atol=1e-5)
    assert not load_model("tiny").training
