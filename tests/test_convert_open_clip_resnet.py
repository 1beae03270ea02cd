"""ResNet image towers (`vision.arch: resnet`, the demo's `tiny-resnet`) exported as open_clip's ModifiedResNet:
the key set and shapes open_clip's module structure gives, the config open_clip builds it from, an exact round
trip (BatchNorm statistics included), the CLI path, and HF's refusal naming the alternative (issue 35).

open_clip is not installed here (it needs torchvision), so the expected layout is written out from open_clip's
`src/open_clip/modified_resnet.py` as a rule: a 3-conv stem `conv1/bn1/conv2/bn2/conv3/bn3` (width/2, width/2,
width; 3x3, no bias), `layer1..4` of `Bottleneck`s (planes w, 2w, 4w, 8w; conv1 1x1, conv2 3x3, conv3 1x1 to
4 x planes, each followed by its BatchNorm; the first block of a stage has `downsample` = OrderedDict
("-1" AvgPool, "0" Conv 1x1, "1" BatchNorm), later ones none), and `attnpool` (`positional_embedding`
(g*g + 1, 32w), `k_proj`/`q_proj`/`v_proj` (32w -> 32w), `c_proj` (32w -> embed_dim), all with bias). open_clip's
CLIP builds it when `vision_cfg.layers` is a list, with heads = width * 32 // head_width.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipforge.cli import main
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models import create_model, load_model
from clipforge.models.convert.export import export_model
from clipforge.models.convert.open_clip import load_open_clip_dir
from clipforge.models.convert.openai import load_openai_state
from clipforge.train.config import load_config

LAYERS = [2, 1, 3, 1]  # several blocks per stage, so block indices and "first block only" downsamples show


def _conv(out_c, in_c, k):
    return {"weight": (out_c, in_c, k, k)}


def _bn(c):
    return {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}


def _linear(out_f, in_f):
    return {"weight": (out_f, in_f), "bias": (out_f,)}


def expected_modified_resnet(layers, width, image_size, embed_dim):
    """{open_clip state-dict key: shape} of `ModifiedResNet(layers, embed_dim, heads, image_size, width)` under
    CLIP's `visual.` prefix, from its module structure (see the module docstring)."""
    modules = {"conv1": _conv(width // 2, 3, 3), "bn1": _bn(width // 2), "conv2": _conv(width // 2, width // 2, 3),
               "bn2": _bn(width // 2), "conv3": _conv(width, width // 2, 3), "bn3": _bn(width)}
    inplanes = width
    for stage, blocks in enumerate(layers):
        planes = width * 2 ** stage
        for j in range(blocks):
            b = f"layer{stage + 1}.{j}"
            modules.update({f"{b}.conv1": _conv(planes, inplanes, 1), f"{b}.bn1": _bn(planes),
                            f"{b}.conv2": _conv(planes, planes, 3), f"{b}.bn2": _bn(planes),
                            f"{b}.conv3": _conv(planes * 4, planes, 1), f"{b}.bn3": _bn(planes * 4)})
            if j == 0:  # stride 2, or inplanes != planes * 4 in layer1
                modules.update({f"{b}.downsample.0": _conv(planes * 4, inplanes, 1),
                                f"{b}.downsample.1": _bn(planes * 4)})
            inplanes = planes * 4
    c = width * 32
    modules.update({f"attnpool.{p}": _linear(c, c) for p in ("k_proj", "q_proj", "v_proj")})
    modules["attnpool.c_proj"] = _linear(embed_dim, c)
    out = {f"visual.{m}.{p}": shape for m, params in modules.items() for p, shape in params.items()}
    out["visual.attnpool.positional_embedding"] = ((image_size // 32) ** 2 + 1, c)
    return out


def _with_bn_statistics(model, seed=0):
    """Every BatchNorm given non-trivial running statistics, affine terms and counters (a trained model's)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, m in enumerate(mod for mod in model.visual.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.copy_(torch.randn(n, generator=g))
            m.bias.copy_(torch.randn(n, generator=g))
            m.num_batches_tracked.fill_(10 + i)
    return model.eval()


def _embeddings(model, pixels, texts):
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(model.tokenizer(texts))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return _with_bn_statistics(create_model("tiny-resnet", vision={"stage_layers": LAYERS, "image_size": 64}))


def test_export_writes_open_clip_modified_resnet_keys_and_shapes(resnet, tmp_path):
    export_model(resnet, "open_clip", tmp_path / "oc")
    state = load_file(str(tmp_path / "oc" / "open_clip_model.safetensors"))
    visual = {k: tuple(v.shape) for k, v in state.items() if k.startswith("visual.")}
    assert visual == expected_modified_resnet(LAYERS, 16, 64, 64)
    # the text keys are the ViT export's (OpenAI layout), not ResNet-specific
    assert {"token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection",
            "logit_scale"} <= set(state)


def test_export_config_is_what_open_clip_builds_a_modified_resnet_from(resnet, tmp_path):
    export_model(resnet, "open_clip", tmp_path / "oc")
    mc = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())["model_cfg"]
    vc = mc["vision_cfg"]
    assert vc["layers"] == LAYERS and vc["width"] == 16 and vc["image_size"] == 64
    assert vc["width"] * 32 // vc["head_width"] == resnet.config.vision.heads  # open_clip's head rule
    assert mc["embed_dim"] == 64 and mc["quick_gelu"] is (resnet.config.text.act == "quick_gelu")


def test_round_trip_gives_identical_embeddings_with_batchnorm_statistics(resnet, tmp_path, rgb_image):
    export_model(resnet, "open_clip", tmp_path / "oc")
    back = load_model(str(tmp_path / "oc"))
    assert back.config.vision.arch == "resnet" and back.config.vision.stage_layers == tuple(LAYERS)
    assert back.config.vision.heads == resnet.config.vision.heads
    for name, buf in resnet.visual.named_buffers():
        assert torch.equal(dict(back.visual.named_buffers())[name], buf), name
    pixels = torch.stack([resnet.preprocess(rgb_image), resnet.preprocess(rgb_image.transpose(0)),
                          torch.randn(3, 64, 64)])
    texts = ["a photo of a cat", "the digit seven", "x"]
    for a, b in zip(_embeddings(resnet, pixels, texts), _embeddings(back, pixels, texts)):
        assert float((a - b).abs().max()) <= 1e-6
    # the statistics matter: the same weights with fresh BatchNorm statistics embed differently
    fresh = create_model("tiny-resnet", vision={"stage_layers": LAYERS, "image_size": 64}).eval()
    fresh.load_state_dict({k: v for k, v in resnet.state_dict().items() if "running_" not in k}, strict=False)
    assert float((_embeddings(fresh, pixels, texts)[0] - _embeddings(resnet, pixels, texts)[0]).abs().max()) > 1e-3


def test_a_bare_modified_resnet_state_dict_loads_with_inferred_config(resnet, tmp_path):
    export_model(resnet, "open_clip", tmp_path / "oc")
    state = load_file(str(tmp_path / "oc" / "open_clip_model.safetensors"))
    back = load_openai_state(state, tokenizer=resnet.tokenizer, vision_heads=resnet.config.vision.heads,
                             text_heads=resnet.config.text.heads)
    assert (back.config.vision.stage_layers, back.config.vision.width, back.config.vision.image_size) == \
        (tuple(LAYERS), 16, 64)
    px = torch.randn(2, 3, 64, 64)
    assert torch.allclose(_embeddings(back, px, ["a"])[0], _embeddings(resnet, px, ["a"])[0], atol=1e-6)


def test_a_key_of_no_modified_resnet_module_is_refused(resnet, tmp_path):
    export_model(resnet, "open_clip", tmp_path / "oc")
    weights = tmp_path / "oc" / "open_clip_model.safetensors"
    state = load_file(str(weights))
    state["visual.layer1.0.se.weight"] = torch.zeros(3)  # a squeeze-excite block clipforge's tower lacks
    save_file(state, str(weights))
    with pytest.raises(ClipforgeError, match=r"visual\.layer1\.0\.se\.weight"):
        load_open_clip_dir(tmp_path / "oc")


def test_cli_exports_a_demo_like_checkpoint_to_open_clip_and_refuses_hf_in_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    _with_bn_statistics(create_model("tiny-resnet"), seed=1).save_pretrained(tmp_path / "final")  # a run's final/
    assert main(["export", str(tmp_path / "final"), "--to", "open_clip", "--out", str(tmp_path / "oc")]) == 0
    assert "wrote open_clip model" in capsys.readouterr().out
    src, back = load_model(str(tmp_path / "final")).eval(), load_model(str(tmp_path / "oc"))
    px = torch.randn(2, 3, 32, 32)
    for a, b in zip(_embeddings(src, px, ["digit 3"]), _embeddings(back, px, ["digit 3"])):
        assert float((a - b).abs().max()) <= 1e-6

    assert main(["export", str(tmp_path / "final"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ResNet" in err and "--to=open_clip" in err
    assert not (tmp_path / "hf").exists()


def test_export_help_states_the_limits_first(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    head = capsys.readouterr().out.split("positional arguments")[0]
    assert "ResNet" in head and "--to hf" in head and "--to open_clip" in head and "model.name=tiny" in head


def test_library_refusal_names_the_parameter(resnet, tmp_path):
    with pytest.raises(UsageError, match=r"`to`=open_clip"):
        export_model(resnet, "hf", tmp_path / "hf")


# The demo's path to HF that `export --help` and docs/export.md give: the demo config with a class-token ViT.
VIT_DEMO_SETS = ["model.name=tiny", "model.overrides={vision: {pool: cls, act: quick_gelu}, text: {act: quick_gelu}}"]


def test_the_documented_vit_demo_model_exports_to_hf_and_open_clip(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.replace("\\\n", " ").split())
    assert all(s in help_text for s in VIT_DEMO_SETS)  # the help shows exactly what is checked here
    cfg = load_config("demo-digits", VIT_DEMO_SETS)
    model = create_model(cfg.model.name, **cfg.model.overrides).eval()
    for fmt in ("hf", "open_clip"):
        export_model(model, fmt, tmp_path / fmt)
        px = torch.randn(2, 3, 32, 32)
        assert torch.allclose(_embeddings(load_model(str(tmp_path / fmt)), px, ["a"])[0],
                              _embeddings(model, px, ["a"])[0], atol=1e-5)
