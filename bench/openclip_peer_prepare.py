"""What open_clip needs to train the peer of a clipforge run, written by clipforge into one work folder.

`bench_demo_learning.py --openclip-python PY` trains clipforge's demo, then calls `prepare(cfg, model_dir, work)`
and runs `openclip_peer_train.py work` under PY (an environment with open_clip and no clipforge). So that the
open_clip side needs nothing from clipforge, everything it reads is plain arrays and JSON, made here from the
very objects clipforge trained with:

    train_images.npy          (N, H, W, 3) uint8: the training images as clipforge's data layer decodes them (RGB)
    train_caption_tokens.npy  (M, L) int32: every caption of every image, tokenized by the run's trained tokenizer
    train_caption_image.npy   (M,) int32: the image each caption belongs to
    schedule_images.npy       (S, B) int32: the image of each batch slot, for every step clipforge took
    schedule_captions.npy     (S, B) int32: the caption (row of train_caption_tokens) of each batch slot
    val_images.npy            (Nv, H, W, 3) uint8 and val_labels.npy (Nv,) int64: the held-out labelled images
    prompt_tokens.npy         (C, T, L) int32: class names x zero-shot templates, tokenized
    model/open_clip_config.json  the architecture in open_clip's own config format (`local-dir:` schema)
    peer.json                 optimiser, schedule, batch, steps, seed, threads, eval steps, prompts as text

The schedule replays clipforge's loader exactly (`clipforge.data.loader`: one permutation per (seed, epoch),
full batches only, one caption per (seed, epoch, image)), so both sides see the same images with the same
captions in the same batches; only the random crops are drawn by each side's own augmentation code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from clipforge.data.loader import epoch_order, pick_caption_index
from clipforge.data.sources import open_source
from clipforge.errors import UsageError
from clipforge.models import load_model
from clipforge.zeroshot.classnames import resolve_classnames
from clipforge.zeroshot.templates import fill, get_templates


def replay_schedule(caption_counts, batch_size: int, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (S, B), caption choice within each image's captions (S, B)) for the first `steps` batches that
    clipforge's single-process training loader yields for a source whose image i has caption_counts[i]
    captions: epoch e visits `epoch_order(n, seed, e)` in full batches, each image with the caption
    `pick_caption_index(count, seed, e, image)`."""
    n = len(caption_counts)
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise UsageError(f"{n} samples is less than one batch of {batch_size}")
    images = np.empty((steps, batch_size), np.int32)
    choice = np.empty((steps, batch_size), np.int32)
    for epoch in range(math.ceil(steps / per_epoch)):
        order = epoch_order(n, seed, epoch, shuffle=True)
        for b in range(per_epoch):
            s = epoch * per_epoch + b
            if s >= steps:
                break
            idx = order[b * batch_size:(b + 1) * batch_size]
            images[s] = idx
            choice[s] = [pick_caption_index(caption_counts[i], seed, epoch, int(i)) for i in idx]
    return images, choice


def _check_mappable(cfg, mc) -> None:
    """Refuse (UsageError) what the open_clip side would not reproduce, naming the setting."""
    v, t, p = mc.vision, mc.text, mc.preprocess
    problems = []
    if v.arch != "resnet":
        problems.append(f"vision.arch {v.arch!r} (only the ResNet tower is mapped)")
    if t.act not in ("gelu", "quick_gelu") or not t.causal or t.pool != "argmax" or not t.proj or t.proj_bias:
        problems.append("a text tower other than causal, argmax-pooled, gelu/quick_gelu, bias-free projection")
    if t.ln_eps != 1e-5 or t.stretched_from is not None:
        problems.append("text.ln_eps other than 1e-5 or a stretched text tower")
    if mc.logit_bias_init is not None:
        problems.append("a logit bias")
    if (p.hflip or p.per_image_norm or p.resize_mode != "shortest" or p.convention != "open_clip"
            or p.interpolation != "bicubic"):
        problems.append("preprocess other than the defaults (no flip, no per-image norm, shortest-side resize, "
                        "open_clip convention, bicubic: open_clip's train crop is always bicubic)")
    if cfg.loss.name != "clip" or cfg.loss.options:
        problems.append(f"loss {cfg.loss.name!r} with options {cfg.loss.options} (open_clip's ClipLoss is 'clip')")
    if cfg.run.precision != "fp32" or cfg.run.gradcache_sub_batch or cfg.data.reinforcement:
        problems.append("run.precision other than fp32, gradient caching, or a reinforcement store")
    if cfg.model.lock_image or cfg.model.lock_text or cfg.adapt.method or cfg.model.weights:
        problems.append("locked towers, adapters or initial weights")
    if cfg.schedule.name not in ("cosine", "constant") or cfg.schedule.min_lr:
        problems.append("a schedule other than cosine / constant to 0 (open_clip's cosine_lr / const_lr)")
    if problems:
        raise UsageError("the open_clip peer cannot reproduce: " + "; ".join(problems))


def open_clip_config(mc) -> dict:
    """clipforge's model config in open_clip's `open_clip_config.json` layout ({model_cfg, preprocess_cfg})."""
    v, t, p = mc.vision, mc.text, mc.preprocess
    model_cfg = {
        "embed_dim": mc.embed_dim,
        "quick_gelu": t.act == "quick_gelu",
        "init_logit_scale": mc.logit_scale_init,
        # ModifiedResNet: open_clip derives the attention-pool heads as width * 32 // head_width
        "vision_cfg": {"image_size": v.image_size, "layers": list(v.stage_layers), "width": v.width,
                       "head_width": v.width * 32 // v.heads, "patch_size": None},
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio, "pad_id": t.pad_token_id,
                     "pool_type": "argmax", "proj_bias": False},
    }
    preprocess_cfg = {"size": v.image_size, "mode": "RGB", "mean": list(p.mean), "std": list(p.std),
                      "interpolation": p.interpolation, "resize_mode": p.resize_mode}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def _images(samples) -> np.ndarray:
    arrs = [np.asarray(s.load_image().convert("RGB"), dtype=np.uint8) for s in samples]
    sizes = {a.shape for a in arrs}
    if len(sizes) != 1:
        raise UsageError(f"the open_clip peer stores images as one array: they must share one size, got "
                         f"{sorted(sizes)[:3]}")
    return np.stack(arrs)


def _tokens(tokenizer, texts) -> np.ndarray:
    return tokenizer(list(texts)).numpy().astype(np.int32)


def prepare(cfg, model_dir, work) -> dict:
    """Write the work folder for `cfg` (a validated clipforge TrainConfig) trained into `model_dir` (its
    `final/` checkpoint: the architecture and the trained tokenizer come from there). Returns peer.json."""
    work = Path(work)
    (work / "model").mkdir(parents=True, exist_ok=True)
    model = load_model(str(model_dir))
    mc, tok = model.config, model.tokenizer
    _check_mappable(cfg, mc)
    if not cfg.data.val:
        raise UsageError("the open_clip peer evaluates zero-shot like clipforge: data.val must be set")

    source = open_source(cfg.data.train, **cfg.data.train_options)
    samples = [source[i] for i in range(len(source))]
    counts = [len(s.captions) for s in samples]
    if min(counts) < 1:
        raise UsageError("every training image needs a caption")
    np.save(work / "train_images.npy", _images(samples))
    captions = [c for s in samples for c in s.captions]
    np.save(work / "train_caption_tokens.npy", _tokens(tok, captions))
    np.save(work / "train_caption_image.npy", np.repeat(np.arange(len(samples), dtype=np.int32), counts))
    for s in samples:
        s.drop_image()

    batch = cfg.data.batch_size
    steps = cfg.run.steps or math.ceil(cfg.run.epochs * (len(source) // batch))
    images, choice = replay_schedule(counts, batch, cfg.run.seed, steps)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    np.save(work / "schedule_images.npy", images)
    np.save(work / "schedule_captions.npy", first[images] + choice)

    val = open_source(cfg.data.val, **cfg.data.val_options)
    vsamples = [val[i] for i in range(len(val))]
    vsamples = [s for s in vsamples if s.label is not None]
    np.save(work / "val_images.npy", _images(vsamples))
    np.save(work / "val_labels.npy", np.array([s.label for s in vsamples], np.int64))
    classnames = resolve_classnames(val, cfg.data.val_classnames)
    templates = get_templates(cfg.data.val_templates)
    prompts = [[fill(t, c) for t in templates] for c in classnames]
    L = mc.text.context_length
    np.save(work / "prompt_tokens.npy", _tokens(tok, [p for row in prompts for p in row]).reshape(
        len(classnames), len(templates), L))

    (work / "model" / "open_clip_config.json").write_text(json.dumps(open_clip_config(mc), indent=1))
    eval_steps = sorted({s for s in range(1, steps + 1) if (cfg.run.eval_every and s % cfg.run.eval_every == 0)}
                        | {steps})
    peer = {
        "steps": steps, "batch_size": batch, "seed": cfg.run.seed, "eval_steps": eval_steps,
        "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay, "betas": list(cfg.optim.betas),
        "eps": cfg.optim.eps, "grad_clip": cfg.optim.grad_clip, "schedule": cfg.schedule.name,
        "warmup_steps": cfg.schedule.warmup_steps, "log_every": cfg.run.log_every,
        "threads": cfg.run.threads or torch.get_num_threads(), "workers": cfg.data.workers,
        "crop_scale": list(mc.preprocess.crop_scale), "classnames": classnames, "templates": templates,
        "prompts": prompts, "num_train": len(samples), "num_captions": len(captions), "num_val": len(vsamples),
        "clipforge_parameters": model.num_parameters(),
    }
    (work / "peer.json").write_text(json.dumps(peer, indent=1))
    return peer
