"""The training loop: one function, `train(config, out_dir)`, used by `clipforge train` and by Python.

Same code on 1 process or N (torchrun): each rank takes its own slice of every global batch, the loss gathers
features with gradient, and DDP averages gradients, so the update equals one process on the whole batch.
A step-level checkpoint holds everything needed to continue bit-exactly (CPU): weights, optimizer, grad
scaler, RNG states, epoch and data position.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from clipforge.atomic import atomic_write_text
from clipforge.output_dirs import claim_output_dir, vet_output_dir
from clipforge.data.decode import SkipCounter
from clipforge.data.loader import make_labelled_loader, make_pair_loader
from clipforge.encode.encoder import SourceFeatures
from clipforge.models.projection import tower_features, tower_head
from clipforge.data.sources import open_source
from clipforge.data.sources.trust import accept_stored
from clipforge.encode import pick_device
from clipforge.errors import UsageError
from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification
from clipforge.losses import clamp_logit_scale_, get_loss
from clipforge.losses.distributed import all_reduce_mean
from clipforge.losses.gradcache import gradcache_step
from clipforge.models import (Tokenizer, create_model, get_model_config, list_models, load_model,
                              train_tokenizer)
from clipforge.models.adapter import base_hash, save_adapter
from clipforge.models.batchnorm import train_mode_batchnorms
from clipforge.models.checkpoint import load_state_dict_strict, read_state_dict
from clipforge.models.lora import apply_lora, has_lora, mark_only_lora_trainable
from clipforge.train.config import TrainConfig, dump_config
from clipforge.train.distributed import DistInfo, barrier, init_distributed
from clipforge.train.feature_cache import FeatureCache, cache_refusal
from clipforge.train.optim import lock_tower, make_optimizer, tower_is_frozen
from clipforge.train.run_log import MetricsLog, plot_curves, progress_line
from clipforge.train.schedule import lr_at
from clipforge.train.sync_batchnorm import convert_sync_batchnorm
from clipforge.train.state import open_resume, resolve_resume, save_checkpoint, set_rng_state
from clipforge.models.stretch import freeze_kept_positions
from clipforge.models.token_merge import apply_token_merge
from clipforge.train.step import forward_loss, pair_extras, reinforcement_store

log = logging.getLogger("clipforge.train")
RUN_KIND = "training-run"


def _train_tokenizer(cfg: TrainConfig, source):
    def captions():
        for i in range(len(source)):
            yield from source[i].captions

    ctx = cfg.model.overrides.get("text", {}).get("context_length") if cfg.model.overrides else None
    ctx = ctx or get_model_config(cfg.model.name).text.context_length
    return train_tokenizer(captions(), cfg.model.tokenizer_vocab_size, context_length=ctx)


def build_training_model(cfg: TrainConfig, source):
    """A fresh model (registered name) or a pretrained one (any load_model reference), with its tokenizer."""
    name = cfg.model.name
    if cfg.adapt.method is not None and name in list_models():
        raise UsageError(f"adapt.method trains an adapter on a pretrained base: model.name must be a reference "
                         f"that carries its weights (a checkpoint directory, hf:..., open_clip:...), not the "
                         f"registered architecture {name!r}")
    if name in list_models():
        overrides = json.loads(json.dumps(cfg.model.overrides or {}))
        tok = None
        if cfg.model.tokenizer == "train":
            tok = _train_tokenizer(cfg, source)
            overrides.setdefault("text", {}).setdefault("vocab_size", cfg.model.tokenizer_vocab_size)
        elif cfg.model.tokenizer:
            tok = Tokenizer.load(cfg.model.tokenizer)
        model = create_model(name, tokenizer=tok, **overrides)
        if cfg.model.weights:
            load_state_dict_strict(model, read_state_dict(cfg.model.weights), cfg.model.weights)
        return model
    if cfg.model.overrides or cfg.model.tokenizer:
        raise UsageError("model.overrides / model.tokenizer apply to registered names only; "
                         f"{name!r} is loaded with its own config and tokenizer")
    return load_model(name)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.run.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.run.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _is_run_dir(path: Path) -> bool:
    """A run directory an older version wrote (without the folder marker)."""
    return (path / "config.yaml").is_file() and any(
        (path / n).exists() for n in ("metrics.jsonl", "checkpoints", "final", "summary.json"))


def _vet_run_dir(out_dir, resume: Optional[str], overwrite: bool) -> Path:
    """The run directory, checked: an existing run is continued only with `resume`, restarted only with
    `overwrite`; a folder that is not a run is refused unless `overwrite`."""
    if resume is not None and overwrite:
        raise UsageError("`resume` and `overwrite` contradict each other: one continues the run, the other "
                         "starts it again")
    out, state = vet_output_dir(out_dir, RUN_KIND, overwrite=overwrite, recognise=_is_run_dir)
    if state == "same" and resume is None and not overwrite:
        raise UsageError(f"{out} holds a training run: pass `resume` latest to continue it, or `overwrite` to "
                         "start it again from scratch")
    return out


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
    out = _vet_run_dir(out_dir, resume, overwrite) if dist.is_main else Path(os.path.abspath(out_dir))
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
        claim_output_dir(out, RUN_KIND, overwrite=overwrite, recognise=_is_run_dir, fresh=overwrite)
    torch.manual_seed(cfg.run.seed)
    # the newest checkpoint that loads (a damaged one is passed over with a warning); RNG comes from its state
    ckpt, model, state = open_resume(resume, out, load_model) if resume else (None, None, None)
    if model is None:
        model = build_training_model(cfg, source)
    if cfg.adapt.method is not None:  # only the adapter trains; the base is frozen and saved by reference
        if not ckpt:
            model.adapter_base_hash = base_hash(model)
            apply_lora(model, cfg.adapt.lora_config())
            model.adapter_base = cfg.model.name
        elif not has_lora(model):
            raise UsageError(f"`resume` {ckpt} holds a full model, but this config trains an adapter (adapt.method)")
        n = mark_only_lora_trainable(model)
        log.info("adapter %s: %s trainable parameters in %d layers", cfg.adapt.method, f"{n:,}",
                 sum(1 for n_, _ in model.named_parameters() if n_.endswith(".lora_A")))
    if cfg.model.lock_image:
        lock_tower(model.visual, cfg.model.lock_image_unlocked_groups)
    if cfg.model.lock_text:
        lock_tower(model.text, cfg.model.lock_text_unlocked_groups)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    if cfg.model.token_merge is not None:  # the periodic evaluation encodes with it too
        apply_token_merge(model, cfg.model.token_merge, cfg.model.merge_method)
    freeze_kept_positions(model)  # a stretched text tower (Long-CLIP) trains only its interpolated positions
    model.to(device).train()
    core = model
    _sync_batchnorm(cfg, model, dist)
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
    scaler = torch.amp.GradScaler("cuda") if cfg.run.precision == "fp16" and device.type == "cuda" else None
    params = [p for p in core.parameters() if p.requires_grad]

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
    evaluator = _ZeroShotCallback(cfg, core, val_source) if val_source is not None else None
    skipped = SkipCounter()
    log.info("training %s for %d steps (%d per epoch), global batch %d on %d process(es), %s, %s",
             cfg.model.name, total, steps_per_epoch, cfg.data.batch_size, dist.world_size, device, cfg.run.precision)
    bar = tqdm(total=total, initial=step, desc="train", unit="step",
               disable=(not dist.is_main) or (None if cfg.run.progress is None else not cfg.run.progress))
    log_lines = dist.is_main and bar.disable  # no bar (not a terminal, or progress off): log lines instead
    t_last, step_last, train_time, last_row = time.perf_counter(), step, 0.0, {}
    while step < total:
        if cache is not None:
            loader = cache.loader(per_rank, seed=cfg.run.seed, epoch=epoch, start=position, rank=dist.rank,
                                  world_size=dist.world_size)
        else:
            loader = make_pair_loader(source, core.preprocess_train, core.tokenizer, per_rank, seed=cfg.run.seed,
                                      epoch=epoch, start=position, rank=dist.rank, world_size=dist.world_size,
                                      workers=cfg.data.workers, extras=extras)
        k = 0
        for batch in loader:
            lr = lr_at(step, base_lr=cfg.optim.lr, total_steps=total, warmup_steps=cfg.schedule.warmup_steps,
                       name=cfg.schedule.name, min_lr=cfg.schedule.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            with _autocast(cfg, device):
                if cfg.run.gradcache_sub_batch:
                    pixels = batch["pixels"].to(device, non_blocking=True)
                    tokens = batch["tokens"].to(device, non_blocking=True)
                    res = gradcache_step(model, pixels, tokens, loss_fn, cfg.run.gradcache_sub_batch, batch=batch)
                else:
                    res = forward_loss(model, loss_fn, batch, device)
            if not cfg.run.gradcache_sub_batch:
                (scaler.scale(res.total) if scaler else res.total).backward()
            if scaler is not None:
                scaler.unscale_(opt)
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                         if cfg.optim.grad_clip else None)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            clamp_logit_scale_(core)
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


def _sync_batchnorm(cfg: TrainConfig, model, dist: DistInfo) -> None:
    """Under DDP, BatchNorm layers in train mode normalise by the statistics of the whole global batch
    (`run.sync_batchnorm`, on unless false), so N processes train exactly as one; frozen ones run in eval mode."""
    norms = train_mode_batchnorms(model)
    if not (dist.enabled and norms):
        return
    if cfg.run.sync_batchnorm is False:
        log.warning("run.sync_batchnorm is false: %d BatchNorm layers normalise by each process's own %d samples, "
                    "so this run differs from one process on the whole batch", len(norms),
                    cfg.data.batch_size // dist.world_size)
        return
    n = convert_sync_batchnorm(model)
    log.info("synchronised BatchNorm: %d layers normalise by the statistics of the global batch of %d "
             "(all %d processes)", n, cfg.data.batch_size, dist.world_size)


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


class _ZeroShotCallback:
    """Periodic zero-shot evaluation on a labelled validation source (rank 0; others wait)."""

    def __init__(self, cfg: TrainConfig, model, source):
        self.cfg, self.model = cfg, model
        self.source = source  # cfg.data.val, opened
        self._frozen_val = None  # (SourceFeatures of the frozen image features) when the image tower is frozen

    def _val_features(self):
        """A frozen image tower's validation features are computed once; each evaluation runs only the head."""
        if not tower_is_frozen(self.model.visual):
            return None
        if self._frozen_val is None:
            feats, ids, labels = [], [], []
            skipped = SkipCounter()
            was = self.model.training
            self.model.eval()
            loader = make_labelled_loader(self.source, self.model.preprocess, 128, shuffle=False,
                                          drop_last=False, on_bad="drop")
            with torch.inference_mode():
                for b in loader:
                    if b["pixels"].shape[0]:
                        feats.append(tower_features(self.model.visual, b["pixels"].to(self.model.device)).float())
                        ids += list(b["ids"])
                        labels += [int(y) if int(y) >= 0 else None for y in b["labels"]]
            skipped.merge(loader.skipped)
            self.model.train(was)
            self._frozen_val = SourceFeatures(torch.cat(feats) if feats else torch.zeros(0, 1), ids,
                                              [[] for _ in ids], labels, skipped=skipped)
        with torch.no_grad():
            head = tower_head(self.model.visual)
            emb = torch.nn.functional.normalize(head(self._frozen_val.feats.to(self.model.dtype)).float(), dim=-1)
        return dataclasses.replace(self._frozen_val, feats=emb.cpu())

    def __call__(self, step: int, dist: DistInfo) -> Optional[dict]:
        row = None
        if dist.is_main:
            res = evaluate_zeroshot_classification(
                self.model, self.source, classnames=self.cfg.data.val_classnames,
                templates=self.cfg.data.val_templates, batch_size=256, progress=False,
                features=self._val_features())
            m = res["metrics"]
            row = {"step": step, "zeroshot_top1": m["top1"], "zeroshot_mean_per_class_recall": m["mean_per_class_recall"]}
            if "top5" in m:
                row["zeroshot_top5"] = m["top5"]
            log.info("step %d: zero-shot top-1 %.4f on %s", step, m["top1"], self.cfg.data.val)
        barrier(dist)
        return row
