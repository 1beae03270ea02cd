"""Synchronised BatchNorm (train/sync_batchnorm.py): DDP over two gloo processes on the demo's BatchNorm ResNet
gives one process's gradients and running statistics; the trainer turns it on for train-mode BatchNorm only."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from clipforge.losses import get_loss
from clipforge.models import create_model
from clipforge.train.config import load_config
from clipforge.train.distributed import DistInfo
from clipforge.train.model_setup import synchronise_batchnorm
from clipforge.train.optim import lock_tower
from clipforge.train.sync_batchnorm import SyncBatchNorm2d, convert_sync_batchnorm


def _model():
    torch.manual_seed(0)
    return create_model("tiny-resnet").double().train()


def _batch(model, n=8):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64) * 2 + 0.5,
            torch.randint(1, 1024, (n, model.config.text.context_length), generator=g))


def _statistics(model):
    return {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var",
                                                                        "num_batches_tracked"))}


def _rank(rank: int, init: str, out: str) -> None:
    """One DDP step on this rank's half batch, with synchronised BatchNorm and without."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = {}
    for sync in (True, False):
        model = _model()
        if sync:
            convert_sync_batchnorm(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        pixels, tokens = _batch(model)
        half = slice(4 * rank, 4 * rank + 4)
        get_loss("clip")(ddp(pixels[half], tokens[half])).total.backward()
        results[sync] = ({k: p.grad for k, p in model.named_parameters()}, _statistics(model))
    torch.save(results, f"{out}-{rank}.pt")
    # both ranks leave together: a rank still in destroy_process_group while the other has exited and the file
    # store is gone waited forever once (CI, loaded machine, both results already written)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_one_process_gradients_and_statistics(tmp_path):
    """float64, so that only an error in the algorithm could tell the runs apart: every gradient (stem to
    attention pool) and every running statistic equal one process's on the whole batch. Without
    synchronisation each rank normalises its 4 samples by their own statistics, and the gradients differ."""
    model = _model()
    pixels, tokens = _batch(model)
    get_loss("clip")(model(pixels, tokens)).total.backward()
    want_grads = {k: p.grad for k, p in model.named_parameters()}
    mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "rank")), nprocs=2)
    results = torch.load(tmp_path / "rank-0.pt")
    grads, stats = results[True]
    assert grads.keys() == want_grads.keys() and "visual.stem.0.weight" in grads
    for k in grads:
        torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-9, atol=1e-12, msg=k)
    want_stats = _statistics(model)
    assert len(stats) == 57
    for k in stats:
        torch.testing.assert_close(stats[k], want_stats[k], rtol=1e-12, atol=1e-14, msg=k)
    plain, _ = results[False]
    assert (plain["visual.stem.0.weight"] - want_grads["visual.stem.0.weight"]).abs().max() > 1e-4


def test_conversion_shares_tensors_and_keeps_keys():
    model = _model()
    keys, params = list(model.state_dict()), {k: p for k, p in model.named_parameters()}
    assert convert_sync_batchnorm(model) == 19
    assert isinstance(model.visual.stem[1], SyncBatchNorm2d) and list(model.state_dict()) == keys
    assert all(p is params[k] for k, p in model.named_parameters())
    pixels, tokens = _batch(model)
    ref = _model()
    with torch.no_grad():  # one process: plain BatchNorm, statistics updated the same way
        torch.testing.assert_close(model.encode_image(pixels), ref.encode_image(pixels), rtol=0, atol=0)
    torch.testing.assert_close(_statistics(model), _statistics(ref), rtol=0, atol=0)


def test_trainer_synchronises_train_mode_batchnorm_only(caplog):
    """The trainer's rule under DDP: on by default where BatchNorm trains, never for a locked (eval-mode) tower,
    and `run.sync_batchnorm: false` keeps per-process statistics with a warning that says what that costs."""
    two = DistInfo(rank=0, world_size=2)
    cfg = load_config(None, ["data.train=jsonl:unused.jsonl", "run.steps=1", "data.batch_size=32"])
    model = _model()
    synchronise_batchnorm(cfg, model, two)
    assert sum(isinstance(m, SyncBatchNorm2d) for m in model.modules()) == 19
    locked = _model()
    lock_tower(locked.visual)
    locked.train()
    synchronise_batchnorm(cfg, locked, two)
    assert not any(isinstance(m, SyncBatchNorm2d) for m in locked.modules())
    cfg.run.sync_batchnorm = False
    model = _model()
    with caplog.at_level(logging.WARNING, logger="clipforge.train"):
        synchronise_batchnorm(cfg, model, two)
    assert not any(isinstance(m, SyncBatchNorm2d) for m in model.modules())
    assert "19 BatchNorm layers normalise by each process's own 16 samples" in caplog.text
