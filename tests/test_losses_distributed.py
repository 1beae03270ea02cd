"""2-process gloo DDP: loss and gradients equal one process on the concatenated batch.

One spawn runs every configuration (spawning costs seconds); each rank writes its loss and its DDP-averaged
parameter gradients to a file, and the test compares them with a single-process run on the whole batch.
"""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from clipforge.losses import get_loss
from clipforge.losses.gradcache import gradcache_step
from clipforge.models.output import CLIPOutput
from conftest import StandInTwoTower

WORLD = 2
N, D = 8, 6
CONFIGS = [  # (name, loss kwargs, per-rank batch sizes, use gradient caching)
    ("clip-dense", "clip", {}, (4, 4), False),
    ("clip-chunked", "clip", {"chunk_size": 3}, (4, 4), False),
    ("clip-uneven", "clip", {"chunk_size": 2}, (3, 5), False),
    ("align", "align", {"chunk_size": 3}, (4, 4), False),
    ("siglip-ring", "siglip", {}, (4, 4), False),
    ("siglip-ring-chunked", "siglip", {"chunk_size": 3}, (4, 4), False),
    ("siglip-gather", "siglip", {"mode": "gather", "chunk_size": 2}, (4, 4), False),
    ("siglip-uneven", "siglip", {}, (5, 3), False),
    ("clip-gradcache", "clip", {"chunk_size": 3}, (4, 4), True),
    ("siglip-gradcache", "siglip", {}, (4, 4), True),
]


def TwoTower(bias: bool):
    return StandInTwoTower(dim=D, logit_bias=-3.0 if bias else None)


def _data():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(N, 3, 2, 2, generator=g, dtype=torch.float64),
            torch.randint(0, 20, (N, 5), generator=g))


def _step(model, loss, pixels, tokens, gradcache):
    model.zero_grad(set_to_none=True)
    if gradcache:
        total = gradcache_step(model, pixels, tokens, loss, sub_batch=3).total
    else:
        total = loss(model(pixels, tokens)).total
        total.backward()
    core = getattr(model, "module", model)
    return total.detach(), {k: p.grad.clone() for k, p in core.named_parameters()}


FEATURE_CONFIGS = [  # losses checked on feature leaves (they need tokens or teacher inputs)
    ("cwcl", {"reverse": True}), ("filip", {"chunk_size": 3}), ("clip+distill", {"chunk_size": 2}),
]


def _feature_inputs():
    """Full-batch leaves for the feature-level losses: an output and a batch dict."""
    g = torch.Generator().manual_seed(2)
    r = lambda *s: F.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1)  # noqa: E731
    mask = torch.ones(N, 4, dtype=torch.bool)
    mask[::3, 2:] = False
    return {"img": r(N, D), "txt": r(N, D), "img_tok": r(N, 3, D), "txt_tok": r(N, 4, D), "mask": mask,
            "t_img": r(2, N, 5), "t_txt": r(2, N, 5)}


def _feature_step(name, kwargs, sl):
    """Loss on slice `sl` of the feature leaves; returns the loss and d loss / d leaves (full-size)."""
    full = _feature_inputs()
    leaves = {k: v.clone().requires_grad_() for k, v in full.items() if k != "mask"}
    scale = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    out = CLIPOutput(leaves["img"][sl], leaves["txt"][sl], scale, image_tokens=leaves["img_tok"][sl],
                     text_tokens=leaves["txt_tok"][sl], text_mask=full["mask"][sl])
    batch = {"teacher_image_embeds": leaves["t_img"][:, sl], "teacher_text_embeds": leaves["t_txt"][:, sl]}
    total = get_loss(name, **kwargs)(out, batch).total
    total.backward()
    grads = {k: v.grad for k, v in leaves.items() if k in ("img", "txt", "img_tok", "txt_tok")}
    return total.detach(), {**grads, "scale": scale.grad}


def _worker(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    pixels, tokens = _data()
    results = {}
    for name, loss_name, kwargs, sizes, gradcache in CONFIGS:
        model = nn.parallel.DistributedDataParallel(TwoTower(bias=loss_name == "siglip").double())
        start = sum(sizes[:rank])
        sl = slice(start, start + sizes[rank])
        results[name] = _step(model, get_loss(loss_name, **kwargs), pixels[sl], tokens[sl], gradcache)
    sl = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    for name, kwargs in FEATURE_CONFIGS:
        results["features-" + name] = _feature_step(name, kwargs, sl)
    torch.save(results, f"{out_file}.{rank}")
    # both ranks leave together: a rank still in destroy_process_group while the other has exited and the file
    # store is gone waited forever once (CI, loaded machine, both results already written)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=WORLD, join=True)
    per_rank = [torch.load(f"{tmp_path / 'out'}.{r}") for r in range(WORLD)]
    pixels, tokens = _data()
    for name, loss_name, kwargs, _, gradcache in CONFIGS:
        model = TwoTower(bias=loss_name == "siglip").double()
        # The reference is the plain dense loss of one process on the whole batch.
        ref_loss, ref_grads = _step(model, get_loss(loss_name, distributed=False,
                                                    **{k: v for k, v in kwargs.items() if k == "label_smoothing"}),
                                    pixels, tokens, False)
        losses = [per_rank[r][name][0] for r in range(WORLD)]
        # The mean of the per-rank losses is the global loss (what a trainer logs after an all-reduce).
        torch.testing.assert_close(sum(losses) / WORLD, ref_loss, rtol=1e-6, atol=0, msg=name)
        for r in range(WORLD):
            grads = per_rank[r][name][1]
            assert grads.keys() == ref_grads.keys()
            for k in ref_grads:
                torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-6, atol=1e-12,
                                           msg=lambda m: f"{name} rank {r} grad {k}: {m}")

    # Feature-level losses: summing the ranks' leaf gradients and dividing by W (what DDP's averaging does
    # to everything downstream) gives the single-process gradient.
    for name, kwargs in FEATURE_CONFIGS:
        ref_loss, ref_grads = _feature_step(name, {**kwargs, "distributed": False}, slice(None))
        res = [per_rank[r]["features-" + name] for r in range(WORLD)]
        torch.testing.assert_close(sum(x[0] for x in res) / WORLD, ref_loss, rtol=1e-6, atol=0, msg=name)
        for k in ref_grads:
            if ref_grads[k] is None:   # a leaf this loss does not read
                assert all(x[1][k] is None for x in res), (name, k)
                continue
            got = sum(x[1][k] for x in res) / WORLD
            torch.testing.assert_close(got, ref_grads[k], rtol=1e-6, atol=1e-12, msg=lambda m: f"{name} {k}: {m}")
