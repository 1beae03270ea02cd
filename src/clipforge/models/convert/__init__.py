"""Converters from other checkpoint layouts (HF, open_clip, OpenAI) into native clipforge models, and back.

`RESOLVERS` is the explicit list of model references they understand, in the order `load_model` tries them
(after registered names and clipforge checkpoint directories):

  hf:ORG/NAME[@REVISION]     downloaded with huggingface_hub (cache, HF_HUB_OFFLINE honoured)
  DIR                        a local HF CLIPModel / SiglipModel directory (config.json with model_type)
  DIR                        an open_clip directory (open_clip_config.json + weights)
  open_clip:ARCH/TAG         through open_clip's pretrained registry (when open_clip is installed)
  open_clip:ARCH + weights   an open_clip architecture with a local weights file
  FILE.safetensors / .pt     an OpenAI-CLIP- or open_clip-layout state dict (config inferred from shapes)

A reference that carries its own weights refuses a separate `weights` file instead of ignoring it. Each takes a
`tokenizer` (an object, or a tokenizer directory / file); without one, an open_clip or OpenAI-layout checkpoint
whose tokenizer is neither beside it nor in an installed open_clip is refused (`openai.checkpoint_tokenizer`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.checkpoint import read_state_dict
from clipforge.models.convert.hf import is_hf_dir, load_hf_dir
from clipforge.models.convert.hub import download_hf
from clipforge.models.convert.open_clip import is_open_clip_dir, load_open_clip, load_open_clip_dir
from clipforge.models.convert.openai import load_openai_state

__all__ = ["Resolver", "RESOLVERS", "refuse_weights"]


@dataclass(frozen=True)
class Resolver:
    """One kind of model reference: `matches(ref)` is cheap (no download); `load(ref, weights=, trust_pickle=,
    **options)` returns the native model."""

    name: str
    matches: Callable[[str], bool]
    load: Callable[..., object]
    options: tuple[str, ...] = ()  # what `load` takes besides weights / trust_pickle


def refuse_weights(ref: str, weights, what: str) -> None:
    if weights is not None:
        raise UsageError(f"`weights` does not apply to {ref!r}: {what} carries its own weights")


def _load_hf(ref: str, *, weights=None, trust_pickle: bool = False, tokenizer=None):
    refuse_weights(ref, weights, "a Hugging Face reference")
    if ref.startswith("hf:"):
        path = download_hf(ref[3:])
        if not is_hf_dir(path):
            raise ClipforgeError(f"{ref}: not a CLIP or SigLIP model (config.json model_type must be clip/siglip)")
        return load_hf_dir(path, trust_pickle=trust_pickle, tokenizer=tokenizer)
    return load_hf_dir(ref, trust_pickle=trust_pickle, tokenizer=tokenizer)


def _load_open_clip(ref: str, *, weights=None, trust_pickle: bool = False, tokenizer=None):
    if is_open_clip_dir(ref):
        refuse_weights(ref, weights, "an open_clip directory")
        return load_open_clip_dir(ref, trust_pickle=trust_pickle, tokenizer=tokenizer)
    spec = ref[len("open_clip:"):]
    if "/" in spec:
        refuse_weights(ref, weights, "an open_clip ARCH/TAG reference")
    return load_open_clip(spec, weights=weights, trust_pickle=trust_pickle, tokenizer=tokenizer)


def _is_state_dict_file(ref: str) -> bool:
    p = Path(ref)
    return p.is_file() and p.suffix in (".safetensors", ".pt", ".pth", ".bin")


def _load_state_dict_file(ref: str, *, weights=None, trust_pickle: bool = False, vision_heads=None,
                          text_heads=None, tokenizer=None):
    refuse_weights(ref, weights, "a weights file")
    return load_openai_state(read_state_dict(ref, trust_pickle=trust_pickle), source=ref, tokenizer=tokenizer,
                             directory=Path(ref).parent, vision_heads=vision_heads, text_heads=text_heads)


RESOLVERS: tuple[Resolver, ...] = (
    Resolver("hf", lambda ref: ref.startswith("hf:") or is_hf_dir(ref), _load_hf, ("tokenizer",)),
    Resolver("open_clip", lambda ref: ref.startswith("open_clip:") or is_open_clip_dir(ref), _load_open_clip,
             ("tokenizer",)),
    Resolver("state-dict file", _is_state_dict_file, _load_state_dict_file,
             ("vision_heads", "text_heads", "tokenizer")),
)
