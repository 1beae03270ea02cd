"""The pieces behind the objectives (issue #14): counterfactual captions, sentence splitting, explicit
augmentation parameters, FILIP's chunked token loss, DreamLIP's multi-positive term, Long-CLIP's stretching
and PCA term, and the tokenizer's truncation policy."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipforge.data.captions import first_sentence, split_sentences, sub_captions
from clipforge.data.counterfactual import counterfactual_caption, find_number
from clipforge.errors import UsageError
from clipforge.losses import get_loss
from clipforge.models import create_model
from clipforge.models.output import CLIPOutput


# ------------------------------------------------------------------------------------- counterfactuals
@pytest.mark.parametrize("caption, old", [
    ("three dogs on a sofa", "three"), ("Three dogs", "Three"), ("a photo of 7 apples.", "7"),
    ("TEN BIRDS", "TEN"), ("there are 10 cars", "10"), ("two cats and four dogs", "two"),
])
def test_counterfactual_swaps_the_number_in_its_form(caption, old):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        cf = counterfactual_caption(caption, rng)
        start, end, value = find_number(caption)
        assert cf is not None and cf != caption
        new_start, new_end, new_value = find_number(cf)
        assert new_value != value and 2 <= new_value <= 10
        assert cf[:start] == caption[:start]
        new = cf[new_start:new_end]
        assert new.isdigit() == old.isdigit()
        if not old.isdigit():
            assert (new.isupper(), new[0].isupper()) == (old.isupper() and len(old) > 1, old[0].isupper())
        seen.add(new_value)
    assert len(seen) >= 5  # draws over the other numbers, not a fixed one


def test_counterfactual_numbers_stay_in_the_data_range():
    """max_count: the counterfactual number comes from 2..max_count only (a set that counts to six never gets a
    "seven" negative, which the text tower alone could learn to reject); a bad range is refused."""
    rng = np.random.default_rng(0)
    seen = {find_number(counterfactual_caption("five red circles", rng, max_count=6))[2] for _ in range(200)}
    assert seen == {2, 3, 4, 6}
    seen10 = {find_number(counterfactual_caption("five red circles", rng))[2] for _ in range(400)}
    assert seen10 == {2, 3, 4, 6, 7, 8, 9, 10}
    with pytest.raises(ValueError, match="max_count"):
        counterfactual_caption("five red circles", rng, max_count=2)


@pytest.mark.parametrize("caption", ["a dog on a sofa", "one dog", "a 3.5 m boat", "the 2024 final",
                                     "my 4th birthday", "someone at the door", "x2 zoom", ""])
def test_no_counterfactual_without_a_counting_number(caption):
    assert find_number(caption) is None
    assert counterfactual_caption(caption, np.random.default_rng(0)) is None


# ---------------------------------------------------------------------------------------- sentences
def test_sentences_and_sub_captions():
    text = "A red car parked at St. Mary's. It is 3.5 m long! Is it new? J. Smith owns it"
    assert split_sentences(text) == ["A red car parked at St. Mary's.", "It is 3.5 m long!", "Is it new?",
                                     "J. Smith owns it"]
    assert first_sentence(text) == "A red car parked at St. Mary's."
    assert first_sentence("no end mark") == "no end mark"
    caps = [text, "A car. A red car parked at St. Mary's."]
    rng = np.random.default_rng(0)
    subs = sub_captions(caps, 3, rng, exclude="A car.")
    assert len(subs) == 3 and len(set(subs)) == 3 and "A car." not in subs
    pool = set(split_sentences(text))
    assert set(subs) <= pool
    assert sorted(sub_captions(caps, 10, rng)) == sorted(pool | {"A car."})


# ---------------------------------------------------------------------------------- augmentation params
def test_train_transform_params_replay_exactly(rgb_image):
    from clipforge.models.transforms import AugParams

    model = create_model("tiny")
    t = model.preprocess_train
    torch.manual_seed(3)
    drawn = t(rgb_image)
    torch.manual_seed(3)
    params = t.sample_params(*rgb_image.size)
    assert torch.equal(t.apply(rgb_image, params), drawn)             # same draw order as before
    assert torch.equal(t.apply(rgb_image, params.as_row()), drawn)    # stored as 5 numbers
    assert AugParams.from_row(params.as_row()) == params
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert t.sample_params(48, 40, g1) == t.sample_params(48, 40, g2)
    with pytest.raises(ValueError):
        t.apply(rgb_image, AugParams((0, 0, 400, 40)))


# ------------------------------------------------------------------------------------------------ FILIP
def test_filip_chunked_equals_one_block_and_top_fraction_selects():
    from clipforge.losses.filip import token_similarities, top_token_masks

    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, 5, 8, generator=g), dim=-1)
    y = F.normalize(torch.randn(6, 7, 8, generator=g), dim=-1)
    y_mask = torch.arange(7)[None] < torch.tensor([7, 3, 5, 2, 7, 4])[:, None]
    out = CLIPOutput(None, None, torch.tensor(10.0))
    out.image_tokens, out.text_tokens, out.text_mask = x.clone().requires_grad_(), y.clone().requires_grad_(), y_mask
    whole = get_loss("filip")(out).total
    whole.backward()
    g_whole = out.image_tokens.grad.clone()
    out.image_tokens.grad = None
    chunked = get_loss("filip", chunk_size=2)(out).total
    chunked.backward()
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(out.image_tokens.grad, g_whole)
    a, b = token_similarities(x, y, y_mask, 2)
    a1, b1 = token_similarities(x, y, y_mask, None)
    torch.testing.assert_close(a, a1) and torch.testing.assert_close(b, b1)

    xm, ym = top_token_masks(x, torch.ones(6, 5, dtype=torch.bool), y, y_mask, 0.4)
    assert (xm.sum(1) == 2).all()                                            # ceil(0.4 * 5)
    assert torch.equal(ym.sum(1), torch.ceil(y_mask.sum(1) * 0.4).long())
    assert not (ym & ~y_mask).any()                                          # never a padding token
    assert float(get_loss("filip", token_fraction=0.4)(out).total.detach()) != pytest.approx(float(whole.detach()))
    with pytest.raises(UsageError):
        get_loss("filip", token_fraction=0.0)


# ---------------------------------------------------------------------------------------------- DreamLIP
def test_multipositive_pulls_every_caption_of_an_image():
    from clipforge.losses.multipos import circle_multipositive

    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(4, 16, generator=g), dim=-1)
    txt = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    owner = torch.tensor([0, 1, 2, 3, 0, 0, 2, 1])
    positive = owner[None] == torch.arange(4)[:, None]
    base = circle_multipositive(img, txt, positive)
    # Moving an extra caption of image 0 towards it lowers image 0's term; a foreign caption raises it.
    closer = txt.clone()
    closer[4] = F.normalize(txt[4] + 2 * img[0], dim=-1)
    assert circle_multipositive(img, closer, positive)[0] < base[0]
    foreign = txt.clone()
    foreign[7] = F.normalize(txt[7] + 2 * img[0], dim=-1)
    assert circle_multipositive(img, foreign, positive)[0] > base[0]
    # The loss reads the loader's sub-captions; with none, only the main captions are positives.
    loss = get_loss("clip+multipos", sub_captions=2)
    out = CLIPOutput(img, txt[:4], torch.tensor(10.0))
    res = loss(out, {"sub_caption_text_embeds": txt[4:], "sub_caption_index": owner[4:]})
    assert set(res.parts) >= {"clip", "multipos"} and torch.isfinite(res.total)
    alone = loss(out, {})
    assert float(alone.parts["multipos"]) != pytest.approx(float(res.parts["multipos"]))


# --------------------------------------------------------------------------------------------- Long-CLIP
def test_stretched_model_keeps_short_texts_and_reads_long_ones(tmp_path):
    from clipforge.cli import main
    from clipforge.encode import Encoder
    from clipforge.models import load_model
    from clipforge.models.stretch import stretch_model, stretch_positions

    model = create_model("tiny").eval()
    L = model.config.text.context_length
    pe = model.text.positional_embedding.detach()
    new_pe = stretch_positions(pe, keep=20, factor=4)
    assert new_pe.shape[0] == 20 + 4 * (L - 20)
    torch.testing.assert_close(new_pe[:20], pe[:20], rtol=0, atol=0)
    torch.testing.assert_close(new_pe[20::4][:L - 20], pe[20:], rtol=0, atol=1e-7)   # old rows sit on the grid

    model.save_pretrained(tmp_path / "base")
    assert main(["stretch", str(tmp_path / "base"), "--context-length", "68", "--out", str(tmp_path / "long")]) == 0
    long = load_model(str(tmp_path / "long")).eval()
    assert long.config.text.context_length == 68 and long.tokenizer.context_length == 68
    words = " ".join(["a"] * 45)                                             # one token per word here
    short = ["a cat", "a photo of a small dog on a sofa", " ".join(["a"] * 25)]
    enc_old, enc_new = Encoder.from_model(model), Encoder.from_model(long)
    fits = [t for t in short if len(model.tokenizer.encode(t)) <= L - 2]
    assert len(fits) >= 2
    diff = (enc_old.encode_texts(fits) - enc_new.encode_texts(fits)).abs().max()
    assert float(diff) <= 1e-5
    # A text between the old and the new context is read to its end: its tail changes the embedding.
    a, b = words + " red", words + " blue"
    assert len(model.tokenizer.encode(a)) > L and len(long.tokenizer.encode(a)) <= 66
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                       # no truncation warning
        ea, eb = enc_new.encode_texts([a, b])
    assert float((ea - eb).abs().max()) > 1e-4
    with pytest.raises(UsageError):
        stretch_model(long)                                                  # already stretched
    with pytest.raises(UsageError):
        stretch_model(model, context_length=L + 1000, factor=4)          # beyond keep + 4·(L − keep)


def test_longclip_pca_term_and_kept_positions_frozen():
    from clipforge.losses.longclip import primary_components
    from clipforge.models.stretch import freeze_kept_positions, stretch_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g)
    full = primary_components(x, 16)
    torch.testing.assert_close(full, x, atol=1e-5, rtol=0)                  # all components: unchanged
    low = primary_components(x, 3)
    assert torch.linalg.matrix_rank(low - x.mean(0)) == 3
    loss = get_loss("longclip", pca_dim=4)
    img, txt = F.normalize(torch.randn(8, 16, generator=g), dim=-1), F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    res = loss(CLIPOutput(img, txt, torch.tensor(10.0)), {"short_text_embeds": txt.flip(0)})
    assert set(res.parts) >= {"long", "short"} and torch.isfinite(res.total)
    with pytest.raises(UsageError):
        loss(CLIPOutput(img, txt, torch.tensor(10.0)), {})

    model = stretch_model(create_model("tiny"), context_length=40)
    assert freeze_kept_positions(model)
    model.text.positional_embedding.sum().backward()
    grad = model.text.positional_embedding.grad
    assert (grad[:20] == 0).all() and (grad[20:] != 0).all()


# ------------------------------------------------------------------------------------------- truncation
def test_tokenizer_truncation_policy():
    from clipforge.models.tokenizer import TextTruncatedWarning, default_tokenizer

    tok = default_tokenizer(16)
    long = "a very long caption that cannot fit in sixteen tokens at all"
    with pytest.warns(TextTruncatedWarning, match="1 of 2 texts exceed the 16-token context"):
        ids = tok([long, "short"])
    assert ids.shape == (2, 16) and tok.num_truncated == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok([long])                                                          # warned once per tokenizer
        tok.with_options(truncate="silent")([long])
    assert tok.num_truncated == 2
    with pytest.raises(UsageError, match="exceed the 16-token context"):
        tok([long], truncate="error")
    with pytest.raises(UsageError):
        tok.with_options(truncate="sometimes")


def test_cli_says_when_texts_are_truncated(tmp_path, capsys):
    from clipforge.cli import main

    from clipforge.models.tokenizer import TextTruncatedWarning

    create_model("tiny").save_pretrained(tmp_path / "m")
    long = " ".join(["word"] * 80)
    # The CLI prints warnings as one stderr line ("warning: ... truncated"); under pytest they are recorded.
    with pytest.warns(TextTruncatedWarning, match="truncated"):
        assert main(["embed", "--model", str(tmp_path / "m"), "--text", long]) == 0
    assert main(["embed", "--model", str(tmp_path / "m"), "--truncate", "error", "--text", long]) == 2
    assert "exceed" in capsys.readouterr().err
