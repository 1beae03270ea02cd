"""Every check of a training config, in one place: `TrainConfig.validate` calls `check_config` before anything
is built. Values of the wrong type were refused when the config was read; here each value must be in its range
(a negative learning rate, betas outside [0, 1), zero steps, negative workers, warm-up or weight decay are
refused, and every count has an upper bound: see MAX_STEPS, max_workers) and the sections must agree. Each
refusal is one `UsageError` naming the key.
"""
from __future__ import annotations

import math
import os

from clipforge.errors import UsageError
from clipforge.models.token_merge import token_merge_setting
from clipforge.train.step import check_loss_inputs

# Upper bounds on every count (a count past them is a typo or an attack, never a setting: run.steps 10^100
# never ends, data.workers 100,000 forks a process per worker, run.threads 100,000 asks torch for that many).
MAX_STEPS = 10**9  # steps, warm-up and every interval: a billion steps is years on any hardware
MAX_EPOCHS = 10**6
MAX_BATCH = 1 << 20  # global batch, gradient-cache sub-batch (the largest CLIP batches are 32-64 k)
MAX_KEEP_CHECKPOINTS = 10_000
MAX_TOKENIZER_VOCAB = 1 << 20
MAX_UNLOCKED_GROUPS = 1 << 16


def cpu_count() -> int:
    return os.cpu_count() or 1


def max_workers() -> int:
    """data.workers at most: a loader process per core and then some, never thousands."""
    return max(64, 4 * cpu_count())


def max_threads() -> int:
    """run.threads at most: four intra-op threads per core (more only contend)."""
    return 4 * cpu_count()


def check_config(cfg) -> None:
    """Refuse a `TrainConfig` (clipforge.train.config_sections) that cannot run, naming the key."""
    if not cfg.data.train:
        raise UsageError("data.train is required (a source spec such as jsonl:path/train.jsonl)")
    if (cfg.run.steps is None) == (cfg.run.epochs is None):
        raise UsageError("give exactly one of run.steps and run.epochs")
    _check_ranges(cfg)
    if cfg.run.precision not in ("fp32", "bf16", "fp16", "auto"):
        raise UsageError(f"run.precision must be fp32, bf16, fp16 or auto, got {cfg.run.precision!r}")
    if cfg.schedule.name not in ("cosine", "constant"):
        raise UsageError(f"schedule.name must be cosine or constant, got {cfg.schedule.name!r}")
    # lock_image + lock_text together: pretrained towers still train their projection heads (projector
    # alignment, from a feature cache); for clipforge's own towers the optimizer finds nothing to train.
    check_loss_inputs(cfg)  # a loss whose inputs the pipeline cannot supply is refused here
    try:
        token_merge_setting(cfg.model.token_merge, cfg.model.merge_method)
    except UsageError as e:
        raise UsageError(f"model.token_merge / model.merge_method: {e}") from None
    if cfg.adapt.method is not None:
        cfg.adapt.lora_config()
        if cfg.model.lock_image or cfg.model.lock_text:
            raise UsageError("adapt.method trains an adapter on a frozen model: model.lock_image / "
                             "model.lock_text do not apply (choose the adapted towers with adapt.towers)")


def _check_ranges(cfg) -> None:
    """Every numeric value in its range, named by its key (types were checked when the config was read)."""
    def need(key: str, ok: bool, want: str) -> None:
        if not ok:
            sec, name = key.split(".")
            got = repr(getattr(getattr(cfg, sec), name))
            got = got if len(got) <= 40 else f"{got[:20]}... ({len(got)} characters)"
            raise UsageError(f"{key} must be {want}, got {got}")

    o, s, r, d, m = cfg.optim, cfg.schedule, cfg.run, cfg.data, cfg.model
    finite = lambda x: x is not None and math.isfinite(x)  # noqa: E731
    need("optim.lr", finite(o.lr) and o.lr > 0, "a number > 0")
    need("optim.weight_decay", finite(o.weight_decay) and o.weight_decay >= 0, "a number >= 0")
    need("optim.eps", finite(o.eps) and o.eps > 0, "a number > 0")
    need("optim.betas", len(o.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in o.betas),
         "two numbers in [0, 1), e.g. [0.9, 0.98]")
    need("optim.grad_clip", o.grad_clip is None or (finite(o.grad_clip) and o.grad_clip > 0),
         "a number > 0, or null to disable clipping")
    need("schedule.warmup_steps", 0 <= s.warmup_steps <= MAX_STEPS, f"an integer in [0, {MAX_STEPS:,}]")
    need("schedule.min_lr", finite(s.min_lr) and 0 <= s.min_lr <= o.lr, f"a number in [0, optim.lr = {o.lr}]")
    need("data.batch_size", 1 <= d.batch_size <= MAX_BATCH, f"an integer in [1, {MAX_BATCH:,}]")
    need("data.workers", 0 <= d.workers <= max_workers(),
         f"an integer in [0, {max_workers()}] (0: load in the training process; at most max(64, 4 x the "
         f"{cpu_count()} CPUs))")
    need("data.feature_cache_views", 1 <= d.feature_cache_views <= 64, "an integer in [1, 64]")
    need("run.steps", r.steps is None or 1 <= r.steps <= MAX_STEPS, f"an integer in [1, {MAX_STEPS:,}]")
    need("run.epochs", r.epochs is None or (finite(r.epochs) and 0 < r.epochs <= MAX_EPOCHS),
         f"a number in (0, {MAX_EPOCHS:,}]")
    need("run.seed", 0 <= r.seed < 2**63, "an integer >= 0")
    for key in ("log_every", "checkpoint_every"):
        need(f"run.{key}", 1 <= getattr(r, key) <= MAX_STEPS, f"an integer in [1, {MAX_STEPS:,}]")
    need("run.keep_checkpoints", 1 <= r.keep_checkpoints <= MAX_KEEP_CHECKPOINTS,
         f"an integer in [1, {MAX_KEEP_CHECKPOINTS:,}]")
    need("run.eval_every", 0 <= r.eval_every <= MAX_STEPS,
         f"an integer in [0, {MAX_STEPS:,}] (0: only at the end)")
    need("run.threads", r.threads is None or 1 <= r.threads <= max_threads(),
         f"an integer in [1, {max_threads()}] (4 x the {cpu_count()} CPUs), or null")
    need("run.gradcache_sub_batch", r.gradcache_sub_batch is None or 1 <= r.gradcache_sub_batch <= MAX_BATCH,
         f"an integer in [1, {MAX_BATCH:,}], or null")
    need("model.tokenizer_vocab_size", 514 <= m.tokenizer_vocab_size <= MAX_TOKENIZER_VOCAB,
         f"an integer in [514, {MAX_TOKENIZER_VOCAB:,}]")
    for key in ("lock_image_unlocked_groups", "lock_text_unlocked_groups"):
        need(f"model.{key}", 0 <= getattr(m, key) <= MAX_UNLOCKED_GROUPS,
             f"an integer in [0, {MAX_UNLOCKED_GROUPS:,}]")
