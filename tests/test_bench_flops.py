"""The benchmarks' FLOP models (what "% of matmul peak" divides by) against the FLOPs torch counts when the
model really runs: the pruned last block must be counted as pruned, and the full one as full.

torch's FlopCounterMode counts the convolutions and Linear layers but not the CPU's fused attention kernel, so
the attention products (4·n²·W per block, 4·n·W for a block that keeps one query row) are added to its count.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipforge.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_embed_folder import vit_image_gflop  # noqa: E402
from bench_train_step import forward_flops, text_flops, vit_flops  # noqa: E402


def _counted(fn) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops()


def _attention(n: int, width: int, layers: int, pruned: bool) -> int:
    return (layers - 1) * 4 * n * n * width + 4 * (1 if pruned else n) * n * width


def test_vit_b32_image_flops_match_the_model():
    model = create_model("ViT-B-32").eval()
    px = torch.zeros(1, 3, 224, 224)
    v, d = model.config.vision, model.config.embed_dim
    n, proj = 50, 2 * v.width * d
    # the pooled path: the last block computes the class token's row only
    pooled = _counted(lambda: model.visual(px)) + _attention(n, v.width, v.layers, True)
    # the token path: every row, and the 49 patch tokens are projected too
    tokens = _counted(lambda: model.visual(px, return_tokens=True)) + _attention(n, v.width, v.layers, False)
    assert abs(pooled / 1e9 - vit_image_gflop(v, d, pruned=True)) < 1e-6
    assert abs((tokens - 49 * proj) / 1e9 - vit_image_gflop(v, d, pruned=False)) < 1e-6
    # the train-step model counts the same blocks and patch embedding (without the final projection)
    assert abs(vit_flops(224, 32, 768, 12, 4, pruned_last=True) - (pooled - proj)) < 1
    assert abs(vit_flops(224, 32, 768, 12, 4) - (tokens - 50 * proj)) < 1


def test_tiny_text_flops_match_the_model():
    model = create_model("tiny").eval()
    t = model.config.text
    ids = torch.randint(1, t.vocab_size - 1, (1, 16))
    ids[0, -1] = t.vocab_size - 1  # the end token (argmax pooling) in the last position: nothing is trimmed
    proj = 2 * t.width * model.config.embed_dim
    pooled = _counted(lambda: model.text(ids)) - proj + _attention(16, t.width, t.layers, True)
    full = _counted(lambda: model.text(ids, return_tokens=True)) - 17 * proj + _attention(16, t.width, t.layers,
                                                                                            False)
    assert abs(pooled - text_flops(16, t.width, t.layers, pruned_last=True)) < 1
    assert abs(full - text_flops(16, t.width, t.layers)) < 1
    assert forward_flops("tiny", 16, True) < forward_flops("tiny", 16)
