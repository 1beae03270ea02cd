"""The training loop: one function, `train(config, out_dir)`, used by `clipforge train` and by Python.

Same code on 1 process or N (torchrun): each rank takes its own slice of every global batch, the loss gathers
features with gradient, and DDP averages gradients, so the update equals one process on the whole batch.
A step-level checkpoint holds everything needed to continue bit-exactly (CPU): weights, optimizer, grad
scaler, RNG states, epoch and data position.

The model it trains is set up by `model_setup`, one optimiser update is `update`, the run folder `run_dir`,
the periodic zero-shot evaluation `zeroshot_eval`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from clipforge.atomic import atomic_write_text
from clipforge.data.decode import SkipCounter
from clipforge.data.loader import make_pair_loader
from clipforge.data.sources import open_source
from clipforge.data.sources.trust import accept_stored
from clipforge.encode import pick_device
from clipforge.errors import UsageError
from clipforge.losses import get_loss
from clipforge.losses.distributed import all_reduce_mean
from clipforge.models import load_model
from clipforge.models.adapter import save_adapter
from clipforge.models.lora import has_lora
from clipforge.train import projector_step
from clipforge.train.config import dump_config
from clipforge.train.config_sections import TrainConfig
from clipforge.train.distributed import DistInfo, barrier, init_distributed
from clipforge.train.feature_cache import FeatureCache, cache_refusal
from clipforge.train.model_setup import build_training_model, prepare_model, synchronise_batchnorm
from clipforge.train.optim import make_optimizer
from clipforge.train.run_dir import claim_run_dir, vet_run_dir
from clipforge.train.run_log import MetricsLog, plot_curves, progress_line
from clipforge.train.state import open_resume, resolve_resume, save_checkpoint, set_rng_state
from clipforge.train.step import pair_extras, reinforcement_store
from clipforge.train.update import Updater, train_precision
from clipforge.train.zeroshot_eval import ZeroShotCallback

log = logging.getLogger("clipforge.train")


def train(cfg: TrainConfig, out_dir, resume: Optional[str] = None, overwrite: bool = False,
          allow_pipe: bool = False) -> dict:
    """Train per `cfg`, writing the run directory `out_dir`. Returns a summary dict (also summary.json).

    `out_dir` is new or empty; or a run, continued with `resume` ("latest" or a checkpoint directory) or
    started again from scratch with `overwrite` (which also replaces a folder that is not a run).

    `allow_pipe`: run the `pipe:` command of a data source that the config file names (`load_config` marks
    them; a command read from a file is refused otherwise, see `clipforge.data.sources.trust`). Sources set in
    Python or through overrides are the caller's own and need no flag.

    Progress: a tqdm bar on a terminal; otherwise (a log file, the demo, CI) one log line every
    `run.log_every` steps with the step, loss, learning rate, samples/s and ETA.
    """
    cfg.validate()
    dist = init_distributed(cfg.run.device)
    # only the main process vets and claims the folder (the others would see the run it has just marked)
    out = vet_run_dir(out_dir, resume, overwrite) if dist.is_main else Path(os.path.abspath(out_dir))
    device = pick_device(cfg.run.device, local_rank=dist.local_rank, param="run.device")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if cfg.data.batch_size % dist.world_size:
        raise UsageError(f"data.batch_size {cfg.data.batch_size} is not divisible by {dist.world_size} processes")
    per_rank = cfg.data.batch_size // dist.world_size
    source = open_source(accept_stored(cfg.data.train, allow_pipe), **cfg.data.train_options)
    # opened now, so that a bad (or refused) validation source fails before the run folder is claimed
    val_source = open_source(accept_stored(cfg.data.val, allow_pipe), **cfg.data.val_options) \
        if cfg.data.val else None
    steps_per_epoch = len(source) // cfg.data.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"{cfg.data.train}: {len(source)} samples is less than one batch of {cfg.data.batch_size}")
    total = cfg.run.steps or math.ceil(cfg.run.epochs * steps_per_epoch)

    if resume and resume != "latest":
        resolve_resume(resume, out)  # a path that is no checkpoint at all fails before the folder is claimed
    if dist.is_main:  # marks the folder as a run; with `overwrite`, the old one is replaced by an empty one
        claim_run_dir(out, overwrite)
    torch.manual_seed(cfg.run.seed)
    # the newest checkpoint that loads (a damaged one is passed over with a warning); RNG comes from its state
    ckpt, model, state = open_resume(resume, out, load_model) if resume else (None, None, None)
    if model is None:
        model = build_training_model(cfg, source)
    prepare_model(cfg, model, ckpt)
    model.to(device).train()
    core = model
    synchronise_batchnorm(cfg, model, dist)
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = get_loss(cfg.loss.name, **cfg.loss.options)
    extras = pair_extras(loss_fn, reinforcement_store(cfg))   # what the loss needs from the data
    if getattr(loss_fn, "needs_logit_bias", False) and core.logit_bias is None:
        raise UsageError(f"loss {cfg.loss.name!r} needs a model with a logit bias (e.g. siglip-B-16, or "
                         "model.overrides: {logit_bias_init: -10, logit_scale_init: 2.302585})")
    cache = _feature_cache(cfg, core, source, loss_fn, out, dist, device)
    if cache is not None:  # bad images were dropped from the cache: epochs count what it holds
        steps_per_epoch = len(cache) // cfg.data.batch_size
        if steps_per_epoch == 0:
            raise UsageError(f"{cfg.data.train}: {len(cache)} usable samples is less than one batch of "
                             f"{cfg.data.batch_size}")
        total = cfg.run.steps or math.ceil(cfg.run.epochs * steps_per_epoch)
    opt = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps)
    closed = cache is not None and projector_step.refusal(core, loss_fn, "bf16", dist.world_size) is None
    precision = train_precision(cfg.run.precision, device, closed_form=closed)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None
    closed_form = _closed_form_step(precision, core, loss_fn, dist, cfg.run.compile_step) if cache is not None \
        else None
    update = Updater(cfg, model, core, loss_fn, opt, scaler, device, total, closed_form, precision)

    step = epoch = position = 0
    if ckpt:
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        log.info("resumed from %s at step %d (epoch %d, position %d)", ckpt, step, epoch, position)
    elif resume == "latest":
        log.info("no checkpoint in %s yet: starting from scratch", out)

    metrics = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        metrics = MetricsLog(out / "metrics.jsonl", resume_step=step if ckpt else None,
                             tensorboard_dir=out / "tensorboard" if cfg.run.tensorboard else None)
    evaluator = ZeroShotCallback(cfg, core, val_source) if val_source is not None else None
    skipped = SkipCounter()
    log.info("training %s for %d steps (%d per epoch), global batch %d on %d process(es), %s, %s",
             cfg.model.name, total, steps_per_epoch, cfg.data.batch_size, dist.world_size, device,
             precision if precision == cfg.run.precision else f"{precision} ({cfg.run.precision})")
    bar = tqdm(total=total, initial=step, desc="train", unit="step",
               disable=(not dist.is_main) or (None if cfg.run.progress is None else not cfg.run.progress))
    log_lines = dist.is_main and bar.disable  # no bar (not a terminal, or progress off): log lines instead
    t_last, step_last, train_time, last_row = time.perf_counter(), step, 0.0, {}
    while step < total:
        if cache is not None:
            loader = cache.loader(per_rank, seed=cfg.run.seed, epoch=epoch, start=position, rank=dist.rank,
                                  world_size=dist.world_size, dtype=closed_form.mm_dtype if closed_form and
                                  closed_form.all_heads else torch.float32)
        else:
            loader = make_pair_loader(source, core.preprocess_train, core.tokenizer, per_rank, seed=cfg.run.seed,
                                      epoch=epoch, start=position, rank=dist.rank, world_size=dist.world_size,
                                      workers=cfg.data.workers, extras=extras)
        k = 0
        for batch in loader:
            res, lr, grad_norm = update(batch, step)
            step, k = step + 1, k + 1
            position = loader.position_after(k)
            bar.update(1)
            loss_val = float(all_reduce_mean(res.total.detach()) if dist.enabled else res.total.detach())
            if not math.isfinite(loss_val):
                raise UsageError(f"loss became {loss_val} at step {step}; lower optim.lr or use fp32")
            if step % cfg.run.log_every == 0 or step == total:
                now = time.perf_counter()
                dt = now - t_last
                train_time += dt
                row = {"step": step, "epoch": epoch, "loss": loss_val, "lr": lr,
                       "logit_scale": float(core.logit_scale.detach().exp()),
                       "samples_per_s": (step - step_last) * cfg.data.batch_size / max(dt, 1e-9)}
                if grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                for name, v in res.parts.items():
                    row[f"loss/{name}"] = float(v)
                last_row = row
                bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr:.2e}")
                if log_lines:
                    log.info(progress_line(row, total, train_time))
                if metrics:
                    metrics.write(row)
                t_last, step_last = time.perf_counter(), step
            if evaluator and ((cfg.run.eval_every and step % cfg.run.eval_every == 0) or step == total):
                t0 = time.perf_counter()
                res_eval = evaluator(step, dist)
                if metrics and res_eval:
                    metrics.write(res_eval)
                    last_row.update(res_eval)
                t_last += time.perf_counter() - t0  # evaluation time is not training time
            if step % cfg.run.checkpoint_every == 0 or step == total:
                if dist.is_main:
                    save_checkpoint(model, out, step=step, epoch=epoch, position=position, optimizer=opt,
                                    scaler=scaler, config_dict=cfg.to_dict(), keep=cfg.run.keep_checkpoints)
                barrier(dist)
            if step >= total:
                break
        else:  # the epoch ran out (or a resumed position was already at its end): next epoch
            epoch, position = epoch + 1, 0
        skipped.merge(loader.skipped)
    bar.close()
    if cache is not None:
        skipped.merge(cache.skipped)
    summary = {"steps": step, "epochs_completed": epoch, "train_time_s": round(train_time, 2),
               "final": last_row, "skipped": skipped.as_dict(), "run_dir": str(out),
               "feature_cache": cache is not None}
    if dist.is_main:
        if has_lora(core):  # the adapter alone, naming its base (load it as BASE+ADAPTER or by itself)
            save_adapter(core, out / "final")
        else:
            core.save_pretrained(out / "final")
        metrics.close()
        plot_curves(out / "metrics.jsonl", out / "curves.png")
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
        if skipped.total:
            log.warning("skipped %d bad samples: %s", skipped.total, dict(skipped.items()))
    barrier(dist)
    return summary


def _closed_form_step(precision: str, core, loss_fn, dist: DistInfo, compile_step: bool = False):
    """The closed-form cached step (train/projector_step.py) when it applies, else None (autograd)."""
    why = projector_step.refusal(core, loss_fn, precision, dist.world_size)
    if why:
        log.info("feature cache: autograd step (%s)", why)
        return None
    log.info("feature cache: closed-form step (linear heads, CLIP loss, %s matmuls)", precision)
    return projector_step.ProjectorStep(core, loss_fn, precision, compile=compile_step)


def _feature_cache(cfg: TrainConfig, model, source, loss_fn, out: Path, dist: DistInfo, device):
    """The run's feature cache when both towers are frozen up to their heads (see data.feature_cache)."""
    if cfg.data.feature_cache is False:
        return None
    why = cache_refusal(cfg, model, loss_fn)
    if why is not None:
        if cfg.data.feature_cache:
            raise UsageError(f"data.feature_cache is true, but this run cannot train from cached features: {why}")
        return None
    kw = dict(views=cfg.data.feature_cache_views, batch_size=128, workers=cfg.data.workers, device=device,
              progress=cfg.run.progress)
    if dist.is_main:
        cache = FeatureCache.build(model, source, out / "feature_cache", **kw)
    barrier(dist)
    if not dist.is_main:  # every chunk exists now: this reads them
        cache = FeatureCache.build(model, source, out / "feature_cache", **kw)
    log.info("feature cache: %d images (%d skipped) x %d view(s), %d captions: training the projection heads "
             "only", len(cache), cache.skipped.total, cache.views, cache.text.shape[0])
    return cache
