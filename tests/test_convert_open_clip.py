"""open_clip <-> clipforge parity, against open_clip's own forward pass (skips without open_clip).

CI has no open_clip (it needs torchvision beside another torch), so what this file checks live is also checked
there against goldens open_clip produced (`tests/test_golden_fidelity.py`: tokenizer ids, preprocessing, model
outputs of two odd configs, and the export reproducing open_clip's own files); this file adds the real
ViT-B-32 layout and open_clip loading clipforge's export.

open_clip needs torchvision, which imports only beside torch 2.14.1 here, so this runs in its own env:
    python3 -m venv /work/ocenv && /work/ocenv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        open_clip_torch pytest tokenizers
    /work/ocenv/bin/pip install -e . --no-deps && /work/ocenv/bin/python -m pytest tests/test_convert_open_clip.py -q
"""
from __future__ import annotations

import json

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from safetensors.torch import save_file  # noqa: E402

from clipforge.models import load_model  # noqa: E402
from clipforge.models.convert.export import export_model  # noqa: E402

TOL = 1e-5
TEXTS = ["a photo of a cat", "two dogs playing in the snow", "Café crème, naïve résumé!", "東京の猫 🐱",
         "it's a long, long caption " * 12]


def _randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():  # open_clip initialises LN/biases at 1/0: randomise so a misplaced tensor shows
        for n, p in model.named_parameters():
            if p.ndim == 1 and n != "logit_scale":
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _oc_outputs(model, tokenizer, pixels):
    with torch.no_grad():
        img = model.encode_image(pixels, normalize=True)
        txt = model.encode_text(tokenizer(TEXTS), normalize=True)
    return img, txt, model.logit_scale.exp() * img @ txt.T


def _cf_outputs(model, pixels):
    with torch.no_grad():
        o = model(pixels, model.tokenizer(TEXTS))
    return o.image_embeds, o.text_embeds, o.logit_scale * o.image_embeds @ o.text_embeds.T


def _diffs(a, b):
    return [float((x - y).detach().abs().max()) for x, y in zip(a, b)]


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    """A reduced ViT-B-32-family config (same layout, 2 layers, 32 px) registered with open_clip."""
    d = tmp_path_factory.mktemp("oc_cfg")
    cfg = {"embed_dim": 64, "quick_gelu": True,
           "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}
    (d / "ViT-B-32-cftiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    return "ViT-B-32-cftiny"


@pytest.mark.parametrize("arch", ["tiny", pytest.param("ViT-B-32", marks=pytest.mark.slow)])
def test_open_clip_parity_and_export(tmp_path, tiny_arch, arch, capsys):
    name = tiny_arch if arch == "tiny" else arch
    oc_model = _randomise(open_clip.create_model(name))
    oc_tok = open_clip.get_tokenizer(name)
    size = oc_model.visual.image_size[0]
    pixels = torch.randn(2, 3, size, size)
    ref = _oc_outputs(oc_model, oc_tok, pixels)

    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in oc_model.state_dict().items()}, str(f))
    model = load_model(f"open_clip:{name}", weights=str(f))
    assert model.config.vision.act == ("quick_gelu" if arch == "tiny" else "gelu")  # from the arch config
    assert torch.equal(model.tokenizer(TEXTS), oc_tok(TEXTS))
    d_load = _diffs(_cf_outputs(model, pixels), ref)

    export_model(model, "open_clip", tmp_path / "oc")
    oc2, _, pre2 = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    d_export = _diffs(_oc_outputs(oc2.eval(), oc_tok, pixels), ref)
    back = load_model(str(tmp_path / "oc"))
    d_back = _diffs(_cf_outputs(back, pixels), ref)
    with capsys.disabled():
        print(f"\n[open_clip {name}] max|diff| load={d_load} export={d_export} reload={d_back}")
    assert max(d_load + d_export + d_back) < TOL


def test_open_clip_tokenizer_and_preprocess(tiny_arch, rgb_image, capsys):
    import random

    from clipforge.models.convert.openai import openai_tokenizer

    oc_tok = open_clip.get_tokenizer("ViT-B-32")
    ours = openai_tokenizer(77, 49408)
    rng = random.Random(0)
    words = ("a photo of the cat café naïve Zürich Москва 東京 猫 🚲 it's they're U.S.A. 3.14 (x) [y] "
             "&amp; <b> ½ “q” — ... !!! O'Brien e-mail").split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.choice([1, 4, 12, 40]))) for _ in range(2000)]
    a, b = oc_tok(texts), ours(texts)
    same = sum(torch.equal(a[i], b[i]) for i in range(len(texts)))
    with capsys.disabled():
        print(f"\n[open_clip tokenizer] identical rows: {same}/{len(texts)}")
    assert same == len(texts)  # incl. HTML entities and curly quotes: ours cleans text as open_clip does

    _, _, pre = open_clip.create_model_and_transforms("ViT-B-32")
    from clipforge.models.convert.open_clip import config_from_open_clip
    from clipforge.models.transforms import image_transform

    cfg = config_from_open_clip(open_clip.get_model_config("ViT-B-32"))
    img = rgb_image.resize((448, 448))
    x_oc, x_cf = pre(img), image_transform(cfg)(img)
    with capsys.disabled():
        print(f"[open_clip preprocess] max|diff| {float((x_oc - x_cf).abs().max()):.4f} "
              f"mean {float((x_oc - x_cf).abs().mean()):.5f}")
    assert x_oc.shape == x_cf.shape and float((x_oc - x_cf).abs().mean()) < 0.02
