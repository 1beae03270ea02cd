"""The model a run trains: built fresh or loaded, then adapted, locked and prepared per the config."""
from __future__ import annotations

import json
import logging

from clipforge.errors import UsageError
from clipforge.models import Tokenizer, create_model, get_model_config, list_models, load_model, train_tokenizer
from clipforge.models.adapter import base_hash
from clipforge.models.batchnorm import train_mode_batchnorms
from clipforge.models.checkpoint import load_state_dict_strict, read_state_dict
from clipforge.models.lora import apply_lora, has_lora, mark_only_lora_trainable
from clipforge.models.stretch import freeze_kept_positions
from clipforge.models.token_merge import apply_token_merge
from clipforge.train.config_sections import TrainConfig
from clipforge.train.distributed import DistInfo
from clipforge.train.optim import lock_tower
from clipforge.train.sync_batchnorm import convert_sync_batchnorm

log = logging.getLogger("clipforge.train")


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


def prepare_model(cfg: TrainConfig, model, ckpt) -> None:
    """What trains and how: an adapter on a frozen base (`adapt.method`; `ckpt`, a resumed checkpoint, already
    holds it), locked towers, gradient checkpointing, token merging, a stretched text tower's kept positions."""
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


def synchronise_batchnorm(cfg: TrainConfig, model, dist: DistInfo) -> None:
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
