"""The pruned last block (`Transformer(keep=...)`): a pooled tower computes only the pooled row in its last
block. It must give exactly the row the full block gives (checked in float64, where rounding cannot hide a
wrong mask or a wrong row), with the same gradients, in every block layout the towers use."""
from __future__ import annotations

import pytest
import torch

from clipforge.models import create_model
from clipforge.models.layers import Transformer


def _rows(x, keep):
    return x[torch.arange(len(x)), keep] if torch.is_tensor(keep) else x[:, keep]


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layers", [1, 3])
def test_keep_matches_full_rows_in_float64(norm_first, causal, layers):
    torch.manual_seed(0)
    tr = Transformer(32, layers, 4, 4.0, "gelu", norm_first).double()
    x = torch.randn(5, 11, 32, dtype=torch.float64)
    full = tr(x, causal=causal)
    for keep in (0, 7, torch.tensor([0, 10, 3, 3, 6])):
        out = tr(x, causal=causal, keep=keep)
        assert out.shape == (5, 1, 32)
        torch.testing.assert_close(out[:, 0], _rows(full, keep), rtol=1e-12, atol=1e-12)


def test_keep_causal_row_ignores_later_positions():
    """A causal kept row must not see positions after it: changing them leaves it unchanged."""
    torch.manual_seed(0)
    tr = Transformer(16, 2, 2, 4.0, "gelu").double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    keep = torch.tensor([3, 5])
    y = x.clone()
    y[0, 4:] += 1.0
    y[1, 6:] -= 2.0
    torch.testing.assert_close(tr(x, causal=True, keep=keep), tr(y, causal=True, keep=keep), rtol=0, atol=1e-12)


def test_keep_gradients_match_full():
    """Training uses the pruned block too: the parameter gradients of a loss on the kept rows are the same."""
    torch.manual_seed(0)
    tr = Transformer(16, 2, 2, 4.0, "gelu").double()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    keep = torch.tensor([6, 2, 4])
    _rows(tr(x, causal=True), keep).pow(2).sum().backward()
    full = {n: p.grad.clone() for n, p in tr.named_parameters()}
    tr.zero_grad()
    tr(x, causal=True, keep=keep).pow(2).sum().backward()
    for n, p in tr.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(g, full[n], rtol=1e-10, atol=1e-12, msg=n)


def test_keep_with_grad_checkpointing_and_no_blocks():
    torch.manual_seed(0)
    tr = Transformer(16, 2, 2, 4.0, "gelu").double()
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    ref = tr(x, keep=0)
    tr.grad_checkpointing = True
    torch.testing.assert_close(tr(x, keep=0), ref, rtol=0, atol=1e-12)
    empty = Transformer(16, 0, 2, 4.0, "gelu")
    z = torch.randn(2, 5, 16)
    torch.testing.assert_close(empty(z, keep=torch.tensor([1, 4])), z[[0, 1], [1, 4]].unsqueeze(1))


@pytest.mark.parametrize("name", ["ViT-B-32", "tiny"])
def test_towers_pooled_path_equals_token_path(name):
    """The towers' pooled path (pruned) against their token path (full last block), in float64."""
    torch.manual_seed(0)
    model = create_model(name).double().eval()
    s = model.config.vision.image_size
    px = torch.randn(2, 3, s, s, dtype=torch.float64)
    ids = model.tokenizer(["a cat", "two dogs playing in the snow"])
    with torch.no_grad():
        torch.testing.assert_close(model.visual(px).pooled, model.visual(px, return_tokens=True).pooled,
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.text(ids).pooled, model.text(ids, return_tokens=True).pooled,
                                   rtol=1e-10, atol=1e-12)
