"""Creating models: a registered config (or any `CLIPConfig`) -> a randomly initialised `CLIPModel` with its
tokenizer and preprocessing. Loading weights into one is `loading.py`'s job."""
from __future__ import annotations

from typing import Optional

from clipforge.errors import UsageError
from clipforge.models.clip import CLIPModel
from clipforge.models.config import CLIPConfig, get_model_config
from clipforge.models.tokenizer import Tokenizer, default_tokenizer

__all__ = ["create_model", "build_model"]


def create_model(name: str, *, tokenizer: Optional[Tokenizer] = None, device=None, **overrides) -> CLIPModel:
    """A randomly initialised model from a registered config, with its tokenizer and preprocessing."""
    cfg = get_model_config(name, **overrides)
    return build_model(cfg, tokenizer=tokenizer, device=device)


def build_model(cfg: CLIPConfig, *, tokenizer: Optional[Tokenizer] = None, device=None) -> CLIPModel:
    """A randomly initialised model for `cfg`; the tokenizer defaults to the merge-free byte-level one."""
    tok = tokenizer or default_tokenizer(cfg.text.context_length)
    if tok.vocab_size > cfg.text.vocab_size:
        raise UsageError(f"tokenizer has {tok.vocab_size} ids but the text tower only {cfg.text.vocab_size}: "
                         f"set text.vocab_size >= {tok.vocab_size}")
    model = CLIPModel(cfg, tokenizer=tok)
    return model.to(device) if device is not None else model
