"""The benchmarks' FLOP models (what "% of matmul peak" divides by) against the FLOPs torch counts when the
model runs: the pruned last block must be counted as pruned, and the full one as full.

The models run on the meta device: nothing is allocated (a ViT-B/32 would take 600 MB), and there attention
runs as explicit matmuls, which FlopCounterMode counts (the CPU's fused attention kernel it does not)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from clipforge.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_embed_folder import vit_image_gflop  # noqa: E402
from bench_train_step import forward_flops, text_flops, vit_flops  # noqa: E402


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops()


def _meta_model(name):
    with torch.device("meta"):
        return create_model(name).eval()


def test_vit_b32_image_flops_match_the_model():
    model = _meta_model("ViT-B-32")
    px = torch.zeros(1, 3, 224, 224, device="meta")
    v, d = model.config.vision, model.config.embed_dim
    proj = 2 * v.width * d
    pooled = _counted(lambda: model.visual(px))  # the last block computes the class token's row only
    tokens = _counted(lambda: model.visual(px, return_tokens=True))  # every row; the 49 patches projected too
    assert pooled < tokens - 49 * proj  # the pruning is real
    assert abs(pooled / 1e9 - vit_image_gflop(v, d, pruned=True)) < 1e-6
    assert abs((tokens - 49 * proj) / 1e9 - vit_image_gflop(v, d, pruned=False)) < 1e-6
    # the train-step model counts the same blocks and patch embedding (without the final projection)
    assert vit_flops(224, 32, 768, 12, 4, pruned_last=True) == pooled - proj
    assert vit_flops(224, 32, 768, 12, 4) == tokens - 50 * proj


def test_tiny_text_flops_match_the_model():
    model = _meta_model("tiny")
    t = model.config.text
    ids = torch.randint(1, t.vocab_size - 1, (1, 16))
    ids[0, -1] = t.vocab_size - 1  # the end token (argmax pooling) last: the row the pruned block keeps
    ids = ids.to("meta")
    proj = 2 * t.width * model.config.embed_dim
    pooled = _counted(lambda: model.text.embed(ids)) - proj
    full = _counted(lambda: model.text.embed(ids, return_tokens=True)) - 17 * proj  # 16 token rows + pooled
    assert text_flops(16, t.width, t.layers, pruned_last=True) == pooled
    assert text_flops(16, t.width, t.layers) == full
    assert forward_flops("tiny", 16, True) < forward_flops("tiny", 16)
