"""Creating models: a registered config (or any `CLIPConfig`) -> a randomly initialised `CLIPModel` with its
tokenizer and preprocessing. Loading weights into one is `loading.py`'s job."""
from __future__ import annotations

from typing import Optional

from clipforge.errors import UsageError
from clipforge.models.clip import CLIPModel
from clipforge.models.config import CLIPConfig, get_model_config
from clipforge.models.hf_text import hf_tokenizer
from clipforge.models.pretrained_config import resolve_config
from clipforge.models.pretrained_sources import hf_text_dir
from clipforge.models.tokenizer import Tokenizer, default_tokenizer

__all__ = ["create_model", "build_model"]


def create_model(name: str, *, tokenizer: Optional[Tokenizer] = None, device=None, pretrained: bool = True,
                 **overrides) -> CLIPModel:
    """A model from a registered config, with its tokenizer and preprocessing: randomly initialised, except
    pretrained towers (EfficientNet `vision.pretrained`, `text.hf`), whose weights load unless `pretrained`
    is False."""
    cfg = get_model_config(name, **overrides)
    return build_model(cfg, tokenizer=tokenizer, device=device, pretrained=pretrained)


def build_model(cfg: CLIPConfig, *, tokenizer: Optional[Tokenizer] = None, device=None,
                pretrained: bool = False) -> CLIPModel:
    """A model for `cfg` (randomly initialised; `pretrained` loads the pretrained towers' weights). The
    tokenizer defaults to a Hugging Face text tower's own, else to the merge-free byte-level one."""
    cfg = resolve_config(cfg)
    if tokenizer is None and cfg.text.hf is not None:  # (a checkpoint directory passes its own)
        tokenizer = hf_tokenizer(hf_text_dir(cfg.text.hf), cfg.text.context_length)
    tok = tokenizer or default_tokenizer(cfg.text.context_length)
    if tok.vocab_size > cfg.text.vocab_size:
        raise UsageError(f"tokenizer has {tok.vocab_size} ids but the text tower only {cfg.text.vocab_size}: "
                         f"set text.vocab_size >= {tok.vocab_size}")
    model = CLIPModel(cfg, tokenizer=tok, pretrained=pretrained)
    return model.to(device) if device is not None else model

