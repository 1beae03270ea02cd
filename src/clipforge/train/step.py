"""What one training step feeds its loss: the inputs the loss declares (`losses.NEEDS`), nothing more.

    needs = loss_needs(loss_fn)
    loader = make_pair_loader(..., extras=pair_extras(loss_fn, store))     # the data the loss needs
    res = forward_loss(model, loss_fn, batch, device)                      # one forward, the loss

`forward_loss` runs the model once: the batch's captions and every extra text stream the loader made
(counterfactual captions, sub-captions, first sentences) go through the text tower together, so DDP sees one
forward per backward and each stream is embedded exactly like the captions. Token-level features are asked
for only when the loss needs them. The extra streams' embeddings reach the loss in its `batch` argument
(`counterfactual_text_embeds`, `sub_caption_text_embeds`, `short_text_embeds`); index tensors and stored
teacher embeddings are moved to the model's device.

`check_loss_inputs(cfg)` is the config-load check: a loss whose inputs this pipeline cannot supply is refused
with one line naming what is missing, before any data is read or model built.
"""
from __future__ import annotations

from typing import Optional

import torch

from clipforge.data.counterfactual import MAX_COUNT
from clipforge.data.loader import PairExtras
from clipforge.data.reinforced import ReinforcementStore
from clipforge.errors import UsageError
from clipforge.losses import NEEDS, get_loss, loss_needs
from clipforge.losses.registry import LossOutput
from clipforge.models import get_model_config, list_models

# batch key of an extra text stream's token ids -> batch key of its embeddings, as the loss reads them
TEXT_STREAMS = (("counterfactual_tokens", "counterfactual_text_embeds"),
                ("sub_caption_tokens", "sub_caption_text_embeds"),
                ("short_tokens", "short_text_embeds"))
_TO_DEVICE = ("count_index", "sub_caption_index", "teacher_image_embeds", "teacher_text_embeds")
# What gradient caching cannot supply: it embeds pooled image/text features of the batch's captions only.
_NOT_WITH_GRADCACHE = ("token_features", "counterfactual_captions", "caption_lists", "short_captions",
                       "caption_logits")


def pair_extras(loss_fn, reinforcement=None) -> PairExtras:
    """The loader's extras for `loss_fn`'s declared needs (a reinforcement store replays stored views and
    captions whatever the loss; its teacher embeddings are what `needs_teacher_embeddings` reads)."""
    needs = loss_needs(loss_fn)
    return PairExtras(counterfactuals="counterfactual_captions" in needs,
                      max_count=int(getattr(loss_fn, "max_count", MAX_COUNT)),
                      sub_captions=int(getattr(loss_fn, "caption_list_size", 0)) if "caption_lists" in needs else 0,
                      short_captions="short_captions" in needs,
                      reinforcement=reinforcement)


def _to(x, device):
    if isinstance(x, (list, tuple)):
        return [t.to(device, non_blocking=True) for t in x]
    return x.to(device, non_blocking=True)


def forward_loss(model, loss_fn, batch: dict, device) -> LossOutput:
    """One forward of `model` (plain or DDP) on `batch` and the loss on it (a feature-cache batch runs the
    projection heads on its cached features)."""
    if "image_features" in batch:
        out = model(image_features=batch["image_features"].to(device, non_blocking=True),
                    text_features=batch["text_features"].to(device, non_blocking=True))
        return loss_fn(out, batch)
    pixels = batch["pixels"].to(device, non_blocking=True)
    tokens = batch["tokens"].to(device, non_blocking=True)
    streams = [(k, out) for k, out in TEXT_STREAMS if k in batch]
    texts = torch.cat([tokens] + [batch[k].to(device, non_blocking=True) for k, _ in streams]) if streams \
        else tokens
    want_tokens = "token_features" in loss_needs(loss_fn)
    out = model(pixels, texts, return_tokens=want_tokens) if want_tokens else model(pixels, texts)
    loss_batch = {k: v for k, v in batch.items() if k not in _TO_DEVICE}
    loss_batch.update({k: _to(batch[k], device) for k in _TO_DEVICE if k in batch})
    if streams:
        b, start = tokens.shape[0], tokens.shape[0]
        all_txt = out.text_embeds
        for k, key in streams:
            n = batch[k].shape[0]
            loss_batch[key] = all_txt[start:start + n]                 # (n, D)
            start += n
        out.text_embeds = all_txt[:b]
        if out.text_tokens is not None:
            out.text_tokens, out.text_mask = out.text_tokens[:b], out.text_mask[:b]
    return loss_fn(out, loss_batch)


def check_loss_inputs(cfg) -> list[str]:
    """Refuse (UsageError, one line) a loss whose declared needs this config's pipeline cannot supply.
    Returns the needs (`NEEDS` keys) otherwise."""
    name = cfg.loss.name
    loss_fn = get_loss(name, **cfg.loss.options)
    needs = loss_needs(loss_fn)

    def refuse(need: str, why: str):
        raise UsageError(f"loss {name!r} needs {NEEDS[need]}, {why}")

    for need in needs:
        if need == "teacher_embeddings" and not cfg.data.reinforcement:
            refuse(need, "which only a reinforcement store supplies: set data.reinforcement to a directory "
                         "written by `clipforge data reinforce`")
        if need in _NOT_WITH_GRADCACHE and cfg.run.gradcache_sub_batch:
            refuse(need, "which run.gradcache_sub_batch cannot supply (it embeds pooled features of one "
                         "caption per image only); unset it")
        if need == "logit_bias" and cfg.model.name in list_models():
            mc = get_model_config(cfg.model.name, **dict(cfg.model.overrides or {}))
            if mc.logit_bias_init is None:
                refuse(need, f"and model {cfg.model.name!r} has none (set model.overrides: "
                             "{logit_bias_init: -10, logit_scale_init: 2.302585})")
        if need == "caption_logits" and cfg.model.name in list_models() and not hasattr(
                get_model_config(cfg.model.name), "decoder"):
            refuse(need, f"and model {cfg.model.name!r} has no caption decoder (use a CoCa config, e.g. coca-tiny)")
    return needs


def reinforcement_store(cfg) -> Optional[ReinforcementStore]:
    """The reinforcement store named by `data.reinforcement`, opened (None when unset)."""
    return ReinforcementStore(cfg.data.reinforcement) if cfg.data.reinforcement else None
