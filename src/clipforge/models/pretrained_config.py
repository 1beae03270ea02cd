"""Resolving a config's pretrained towers: what `text.hf` and a timm image tower name is read once, into the
config itself (the timm part: `timm_tower.resolve_timm`).

`resolve_config(cfg)` returns `cfg` unchanged when it names no Hugging Face text model, or when that model's
config is already in it (a checkpoint). Otherwise it reads the model directory's `config.json` into
`text.hf_config` (dropout set to 0: a frozen or aligned encoder gives the same features every pass) and sets
the text keys that follow from it: width, layers, heads, vocab_size, pad_token_id, pooling (the
sentence-transformers directory's unless given) and context_length (at most the encoder's positions).
"""
from __future__ import annotations

import dataclasses

from clipforge.models.config import CLIPConfig
from clipforge.models.pretrained_sources import hf_text_dir, read_hf_text_config
from clipforge.models.timm_tower import resolve_timm

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "activation_dropout", "classifier_dropout")


def resolve_config(cfg: CLIPConfig) -> CLIPConfig:
    cfg = resolve_timm(cfg)
    t = cfg.text
    if t.hf is None or t.hf_config is not None:
        return cfg
    d = hf_text_dir(t.hf)
    hf, pooling, max_len = read_hf_text_config(d)
    hf = {k: (0.0 if k in DROPOUT_KEYS and isinstance(v, (int, float)) else v) for k, v in hf.items()
          if not k.startswith("_") and k not in ("architectures", "transformers_version", "torch_dtype", "dtype")}
    positions = int(hf.get("max_position_embeddings") or t.context_length)
    ctx = min(t.context_length, positions, max_len or positions)
    pad = hf.get("pad_token_id")
    text = dataclasses.replace(
        t, hf_config=hf, pooling=t.pooling or pooling or "cls", context_length=ctx,
        width=int(hf.get("hidden_size", t.width)), layers=int(hf.get("num_hidden_layers", t.layers)),
        heads=int(hf.get("num_attention_heads", t.heads)), vocab_size=int(hf.get("vocab_size", t.vocab_size)),
        pad_token_id=int(pad) if isinstance(pad, int) and not isinstance(pad, bool) else t.pad_token_id,
        mlp_ratio=float(hf["intermediate_size"]) / int(hf["hidden_size"])
        if hf.get("intermediate_size") and hf.get("hidden_size") else t.mlp_ratio,
    )
    return CLIPConfig.from_dict({**cfg.to_dict(), "text": dataclasses.asdict(text)})  # validated again
