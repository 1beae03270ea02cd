"""The CoCa family: configs, checkpoints, the open_clip layout, generation, the coca loss, the Captioner."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from clipforge.encode.captioner import Captioner
from clipforge.errors import UsageError
from clipforge.losses import get_loss, loss_needs
from clipforge.models import create_model, get_model_config, load_model
from clipforge.models.coca import IGNORE_LABEL, CoCaModel
from clipforge.models.coca_config import CoCaConfig
from clipforge.models.config_family import config_from_dict
from clipforge.models.convert.open_clip_coca import coca_state_from_open_clip, coca_state_to_open_clip
from clipforge.models.generation import generate
from clipforge.models.param_count import count_parameters


@pytest.fixture(scope="module")
def coca():
    torch.manual_seed(0)
    return create_model("coca-tiny").eval()


def test_registered_coca_is_a_coca_model_with_an_exact_parameter_count(coca):
    assert isinstance(coca, CoCaModel) and isinstance(coca.config, CoCaConfig)
    assert count_parameters(coca.config) == sum(p.numel() for p in coca.parameters())
    big = get_model_config("coca_ViT-B-32")
    assert (big.text.context_length, big.pooler_queries, big.decoder.layers) == (76, 256, 12)
    assert 240e6 < count_parameters(big) < 260e6  # open_clip's coca_ViT-B-32: 253.6 M


def test_config_round_trips_and_validates(coca):
    d = json.loads(json.dumps(coca.config.to_dict()))
    assert d["family"] == "coca" and config_from_dict(d) == coca.config
    assert type(config_from_dict({k: v for k, v in d.items() if k not in
                                  ("family", "decoder", "pooler_queries", "pooler_heads", "cls_mask")})).__name__ \
        == "CLIPConfig"
    with pytest.raises(UsageError, match="decoder.width"):
        get_model_config("coca-tiny", decoder={"width": 32, "heads": 2})
    with pytest.raises(UsageError, match="decoder key"):
        config_from_dict({**d, "decoder": {"layerz": 1}})
    with pytest.raises(UsageError, match="pool"):
        get_model_config("coca-tiny", vision={"pool": "mean"})


def test_checkpoint_save_and_load(coca, tmp_path):
    px = torch.randn(2, 3, 32, 32)
    ids = coca.tokenizer(["a red bicycle", "two cats"])
    coca.save_pretrained(tmp_path / "ckpt")
    back = load_model(str(tmp_path / "ckpt"))
    assert isinstance(back, CoCaModel)
    with torch.no_grad():
        a, b = coca(px, ids), back(px, ids)
    torch.testing.assert_close(a.caption_logits, b.caption_logits)
    torch.testing.assert_close(a.image_embeds, b.image_embeds)


def test_open_clip_layout_round_trip(coca):
    sd = coca.state_dict()
    oc = coca_state_to_open_clip(sd, coca.config)
    assert "text_decoder.cross_attn.0.ln_1_kv.weight" in oc and "visual.attn_pool.attn.in_proj_weight" in oc
    back = coca_state_from_open_clip(oc, coca.config)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_forward_labels_padding_and_teacher_forcing(coca):
    ids = coca.tokenizer(["ab", "a longer caption"])
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = coca(px, ids)
        ids2 = ids.clone()
        ids2[:, 3] = 100  # a later token changes the logits from there on, never before (causal decoding)
        out2 = coca(px, ids2)
    assert out.caption_logits.shape == (2, ids.shape[1] - 1, coca.config.text.vocab_size)
    assert torch.equal(out.caption_labels != IGNORE_LABEL, ids[:, 1:] != 0)
    torch.testing.assert_close(out.caption_logits[:, :3], out2.caption_logits[:, :3])
    assert not torch.allclose(out.caption_logits[:, 3], out2.caption_logits[:, 3])


def test_generation_methods_agree_where_they_must(coca):
    torch.manual_seed(1)
    img = coca.image_tokens(torch.randn(2, 3, 32, 32))
    kw = dict(sot=coca.tokenizer.sot_id, eot=coca.tokenizer.eot_id, pad=0, max_tokens=4)
    greedy = generate(coca, img, method="greedy", **kw)
    assert all(len(g) <= 4 and 0 not in g for g in greedy)
    assert generate(coca, img, method="beam", beams=1, **kw) == greedy          # one beam is greedy
    assert generate(coca, img, method="top_p", top_p=1e-6, **kw) == greedy     # a tiny nucleus is greedy
    assert [generate(coca, img[i:i + 1], method="greedy", **kw)[0] for i in range(2)] == greedy  # batched
    g1 = generate(coca, img, method="top_p", top_p=0.9, generator=torch.Generator().manual_seed(3), **kw)
    g2 = generate(coca, img, method="top_p", top_p=0.9, generator=torch.Generator().manual_seed(3), **kw)
    assert g1 == g2
    assert all(len(b) >= 2 for b in generate(coca, img, method="beam", beams=3, min_tokens=2, **kw))
    with pytest.raises(UsageError, match="method"):
        generate(coca, img, method="nucleus", **kw)


def test_beam_search_finds_a_caption_at_least_as_likely_as_greedy(coca):
    torch.manual_seed(2)
    img = coca.image_tokens(torch.randn(1, 3, 32, 32))
    tok = coca.tokenizer
    kw = dict(sot=tok.sot_id, eot=tok.eot_id, pad=0, max_tokens=4, length_penalty=0.0)

    def logp(i, body):
        ids = torch.tensor([[tok.sot_id] + body + [tok.eot_id]])
        lp = torch.log_softmax(coca.caption_logits(img[i:i + 1], ids[:, :-1])[0], -1)
        return float(lp.gather(1, ids[0, 1:, None]).sum())

    with torch.no_grad():
        greedy = generate(coca, img, method="greedy", **kw)
        beam = generate(coca, img, method="beam", beams=4, **kw)
        assert logp(0, beam[0]) >= logp(0, greedy[0]) - 1e-4


def test_coca_loss(coca):
    loss = get_loss("coca", caption_weight=2.0)
    assert loss_needs(loss) == ["caption_logits"]
    out = coca(torch.randn(4, 3, 32, 32), coca.tokenizer(["a", "bb", "a cat", "the dog sat"]))
    res = loss(out)
    want = res.parts["clip"] + 2.0 * torch.nn.functional.cross_entropy(
        out.caption_logits.flatten(0, 1), out.caption_labels.flatten(), ignore_index=IGNORE_LABEL)
    torch.testing.assert_close(res.total, want)
    clip_only = create_model("tiny")
    with pytest.raises(UsageError, match="caption"):
        loss(clip_only(torch.randn(2, 3, 32, 32), clip_only.tokenizer(["a", "b"])))


def test_captioner(coca, tmp_path):
    paths = []
    for i, colour in enumerate(("red", "blue")):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 40), colour).save(p)
        paths.append(str(p))
    cap = Captioner(coca)
    out = cap.caption(paths, method="greedy", max_tokens=3)
    assert len(out) == 2 and all(isinstance(c, str) for c in out)
    assert out == cap.caption(paths[::-1], method="greedy", max_tokens=3)[::-1]
    with pytest.raises(UsageError, match="max_tokens"):
        cap.caption(paths, max_tokens=500)
    with pytest.raises(UsageError, match="caption decoder"):
        Captioner(create_model("tiny"))
