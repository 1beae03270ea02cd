"""Token merging (models/token_merge.py): exact at r = 0, exact where merged tokens are true duplicates, the
class token kept first, sizes conserved, gradients through merged blocks, and one-line refusals."""
from __future__ import annotations

import pytest
import torch

from clipforge.encode import Encoder
from clipforge.errors import UsageError
from clipforge.models import create_model
from clipforge.models.token_merge import (TokenMerge, apply_token_merge, bipartite_soft_matching, merge_weighted,
                                          merged_tokens, pitome_matching, token_counts, token_merge_setting)


def _vit(pool="cls", layers=3, norm_first=True, seed=0):
    torch.manual_seed(seed)
    return create_model("tiny", vision={"pool": pool, "layers": layers, "norm_first": norm_first}).eval()


@pytest.mark.parametrize("pool, norm_first", [("cls", True), ("mean", True), ("map", True), ("cls", False)])
def test_r_zero_is_bit_identical(pool, norm_first):
    m = _vit(pool, norm_first=norm_first)
    px = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = m.encode_image(px)
        apply_token_merge(m, 0)  # r = 0: the exact path itself
        assert m.visual.token_merge is None
        assert torch.equal(m.encode_image(px), ref)
        m.visual.token_merge = TokenMerge(0)  # the merged blocks' own code, merging nothing
        assert torch.equal(m.encode_image(px), ref)
        apply_token_merge(m, 6)
        assert not torch.equal(m.encode_image(px), ref)  # (so the equalities above could fail)


def _paired_tokens(n_pairs: int, width: int) -> torch.Tensor:
    """(2, 1 + 2 n_pairs, W) float64 tokens: a lone first token (the class token, or one patch without a twin),
    then pairs, so that every A token (even position 2j) but the first has an identical B twin (2j - 1)."""
    torch.manual_seed(1)
    pairs = torch.randn(2, n_pairs, width, dtype=torch.float64).repeat_interleave(2, dim=1)
    return torch.cat([torch.randn(2, 1, width, dtype=torch.float64), pairs], dim=1)


@pytest.mark.parametrize("method", ["tome", "pitome"])
@pytest.mark.parametrize("cls", [True, False])
def test_merging_duplicates_changes_nothing(method, cls):
    """Merging a token into its exact twin, with size-weighted means and proportional attention, must give what
    the unmerged tower gives: every other token sees the pair as before, and the pair's value is unchanged."""
    m = _vit("cls" if cls else "mean").double()
    blocks = m.visual.transformer
    x = _paired_tokens(8, 64)
    with torch.no_grad():
        full = blocks(x)
        tm = TokenMerge((8, 0, 0), method)  # all 8 pairs merge in block 1; later blocks see unique tokens
        y, size = merged_tokens(blocks, x, tm, protect_first=cls)
    assert y.shape[1] == x.shape[1] - 8 and torch.equal(size.sum(dim=1), torch.full((2, 1), 17.0).double())
    if cls:
        assert torch.allclose(y[:, 0], full[:, 0], atol=1e-10, rtol=0)
        assert size[:, 0].eq(1).all()
    def pooled(y, size):  # the class row, or the size-weighted mean of the patch tokens
        return y[:, 0] if cls else (y * size).sum(dim=1) / size.sum(dim=1)

    assert torch.allclose(pooled(y, size), full[:, 0] if cls else full.mean(dim=1), atol=1e-10, rtol=0)
    tm_off = TokenMerge((8, 0, 0), method, prop_attn=False)  # without proportional attention it is not exact
    with torch.no_grad():
        y2, size2 = merged_tokens(blocks, x, tm_off, protect_first=cls)
    assert not torch.allclose(pooled(y2, size2), full[:, 0] if cls else full.mean(dim=1), atol=1e-6)


@pytest.mark.parametrize("rule", [
    lambda m, r, p: bipartite_soft_matching(m, r, p),
    lambda m, r, p: pitome_matching(m, r, p, margin=0.5, alpha=1.0),
])
def test_rules_cap_at_half_and_keep_the_class_token_first(rule):
    torch.manual_seed(2)
    x = torch.randn(3, 17, 8)  # class token + 16
    x[:, 0] = 100.0  # far from everything; must still come out first, alone
    merge = rule(x, 100, True)
    y, size = merge_weighted(merge, x, None)
    assert y.shape == (3, 9, 8)  # at most half of the 16 mergeable tokens go
    assert torch.equal(y[:, 0], x[:, 0]) and size[:, 0].eq(1).all()
    assert size.sum(dim=1).eq(17).all()
    assert torch.allclose(y.mul(size).sum(dim=1), x.sum(dim=1), atol=1e-4)  # a merge moves no mass
    assert rule(x[:, :2], 1, True) is None  # one mergeable token: nothing to pair


def test_pitome_protects_isolated_tokens():
    """Tokens unlike all others (low energy) are kept as they are; the clustered ones merge."""
    torch.manual_seed(3)
    base = torch.randn(1, 1, 16)
    cluster = base + 0.01 * torch.randn(1, 12, 16)
    loners = torch.randn(1, 4, 16) * 5
    x = torch.cat([cluster, loners], dim=1)
    merge = pitome_matching(x, 6, False, margin=0.5, alpha=1.0)
    y = merge(x)
    for i in range(4):
        assert (y - loners[:, i:i + 1]).abs().amax(dim=-1).min() < 1e-6  # each loner survives untouched


@pytest.mark.parametrize("method", ["tome", "pitome"])
def test_gradients_flow_through_merged_blocks(method):
    m = _vit("cls", layers=3)
    m.train()
    apply_token_merge(m, 4, method)
    m.visual.transformer.grad_checkpointing = True
    out = m.encode_image(torch.randn(4, 3, 32, 32))
    out.square().sum().backward()
    grads = [p.grad for n, p in m.visual.named_parameters() if n.startswith("transformer.")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_settings_and_schedule():
    assert token_merge_setting(None) is None and token_merge_setting("0") is None
    assert token_merge_setting("8,8,4").r == (8, 8, 4)
    tm = token_merge_setting(4, "pitome")
    assert token_merge_setting(tm.to_dict()) == tm
    assert TokenMerge((2, 1)).schedule(4) == [2, 1, 0, 0]
    assert token_counts(50, 3, TokenMerge(30), protect_first=True) == [26, 14, 14]  # capped; last block unmerged
    assert token_counts(64, 2, TokenMerge(8), protect_first=False) == [56, 48]


@pytest.mark.parametrize("call, match", [
    (lambda: token_merge_setting("a,b"), "tokens per block"),
    (lambda: token_merge_setting(4, "fast"), "merge_method"),
    (lambda: token_merge_setting(-1), "integer >= 0"),
    (lambda: apply_token_merge(_vit(layers=2), "1,1,1"), "3 per-block counts for a tower of 2"),
    (lambda: apply_token_merge(create_model("tiny-resnet"), 2), "needs a ViT image tower"),
    (lambda: Encoder.from_model(_vit(), engine="onnx", token_merge=2), "belongs to inference engine torch"),
    (lambda: Encoder.from_model(_vit(), merge_method="tome"), "needs `token_merge`"),
])
def test_refusals_are_one_line(call, match):
    with pytest.raises(UsageError, match=match) as e:
        call()
    assert "\n" not in str(e.value) and "--" not in str(e.value)


def test_encoder_option_sets_and_describes_the_merge():
    m = _vit("cls")
    px = torch.randn(2, 3, 32, 32)
    exact = Encoder.from_model(m).encode_pixels(px)
    enc = Encoder.from_model(m, token_merge="4,4", merge_method="pitome")
    assert enc.engine.describe()["token_merge"]["r"] == [4, 4]
    merged = enc.encode_pixels(px)
    assert merged.shape == exact.shape and not torch.equal(merged, exact)
    assert "token_merge" not in Encoder.from_model(_vit("cls")).engine.describe()


def _train_cfg(demo, *extra):
    return [f"data.train=jsonl:{demo['train_manifest']}", "data.batch_size=16", "model.tokenizer=train",
            "model.tokenizer_vocab_size=700", "run.steps=2", "run.log_every=1", "run.checkpoint_every=2",
            "run.progress=false", "run.threads=1", *extra]


def test_training_with_token_merge(digits_demo, tmp_path):
    """model.token_merge trains through merged blocks (other weights than the same seeded run without it; the
    trainer is deterministic, tests/test_train.py), and a bad value is refused when the config is read."""
    from safetensors.torch import load_file

    from clipforge.train import load_config, train

    for name, extra in (("plain", ()), ("merged", ("model.token_merge=16", "model.merge_method=pitome"))):
        train(load_config(None, _train_cfg(digits_demo, *extra)), tmp_path / name)
    a, b = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("plain", "merged"))
    key = "visual.transformer.blocks.0.mlp.fc.weight"
    assert not torch.equal(a[key], b[key])
    with pytest.raises(UsageError, match="model.token_merge"):
        load_config(None, _train_cfg(digits_demo, "model.token_merge=a"))


def test_cli_token_merge_on_embed(tmp_path, capsys):
    """--token-merge reaches the image tower from the command line; a bad value is one line naming the flag."""
    import json

    from PIL import Image

    from clipforge.cli import main
    from clipforge.models import save_pretrained

    save_pretrained(_vit("cls"), tmp_path / "m")
    img = tmp_path / "x.png"
    Image.fromarray((torch.rand(40, 40, 3) * 255).to(torch.uint8).numpy()).save(img)

    def vector(*extra):
        assert main(["embed", "-m", str(tmp_path / "m"), "--image", str(img), "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)[0]["vector"]

    exact = vector()
    assert vector("--token-merge", "0") == exact
    assert vector("--token-merge", "8", "--merge-method", "pitome") != exact
    assert main(["embed", "-m", str(tmp_path / "m"), "--image", str(img), "--token-merge", "2x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--token-merge '2x'" in err and "\n" not in err
