"""Creating models: a registered config (or any `CLIPConfig`) -> a randomly initialised `CLIPModel` with its
tokenizer and preprocessing. Loading weights into one is `loading.py`'s job.

Nothing is allocated for a model that cannot fit: `build_model` prices the parameters from the config
(`model_bytes`) against the memory budget first (`clipforge.models.budget`), and `expected_state_shapes` gives
the state dict a config's model holds from a build on the meta device (no memory), for checking a weight
file's header before anything is read or built."""
from __future__ import annotations

from typing import Optional

import torch

from clipforge.errors import UsageError
from clipforge.models.budget import check_memory, format_count
from clipforge.models.clip import CLIPModel
from clipforge.models.config import CLIPConfig
from clipforge.models.families import model_class
from clipforge.models.model_registry import get_model_config
from clipforge.models.param_count import count_parameters
from clipforge.models.hf_text import hf_tokenizer
from clipforge.models.pretrained_config import resolve_config
from clipforge.models.pretrained_sources import hf_text_dir
from clipforge.models.tokenizer import Tokenizer, default_tokenizer

__all__ = ["create_model", "build_model", "model_bytes", "expected_state_shapes"]


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
    check_memory(model_bytes(cfg), f"a model of {format_count(count_parameters(cfg))} parameters "
                                   f"({str(torch.get_default_dtype()).replace('torch.', '')})")
    if tokenizer is None and cfg.text.hf is not None:  # (a checkpoint directory passes its own)
        tokenizer = hf_tokenizer(hf_text_dir(cfg.text.hf), cfg.text.context_length)
    tok = tokenizer or default_tokenizer(cfg.text.context_length)
    if tok.vocab_size > cfg.text.vocab_size:
        raise UsageError(f"tokenizer has {tok.vocab_size} ids but the text tower only {cfg.text.vocab_size}: "
                         f"set text.vocab_size >= {tok.vocab_size}")
    model = model_class(cfg)(cfg, tokenizer=tok, pretrained=pretrained)
    return model.to(device) if device is not None else model



def model_bytes(cfg: CLIPConfig) -> int:
    """Bytes of the parameters of `cfg`'s model in the default dtype (counted on the meta device)."""
    return count_parameters(resolve_config(cfg)) * torch.get_default_dtype().itemsize


def expected_state_shapes(cfg: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in the state dict of `cfg`'s model, from a build on the meta device (no
    tensor memory is allocated: a 17.7 B-parameter config takes about a second)."""
    with torch.device("meta"):
        model = model_class(cfg)(resolve_config(cfg), tokenizer=None, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
