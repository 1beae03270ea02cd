"""Converters from other checkpoint layouts (HF, open_clip, OpenAI) into native clipforge models, and back.

Importing this package registers their model-reference resolvers with `clipforge.models.checkpoint`
(`load_model` imports it lazily for any reference that is not a registered name or a clipforge directory):

  hf:ORG/NAME[@REVISION]     downloaded with huggingface_hub (cache, HF_HUB_OFFLINE honoured)
  DIR                        a local HF CLIPModel / SiglipModel directory (config.json with model_type)
  DIR                        an open_clip directory (open_clip_config.json + weights)
  open_clip:ARCH/TAG         through open_clip's pretrained registry (when open_clip is installed)
  open_clip:ARCH + weights   an open_clip architecture with a local weights file
  FILE.safetensors / .pt     an OpenAI-CLIP- or open_clip-layout state dict (config inferred from shapes)
"""
from __future__ import annotations

from pathlib import Path

from clipforge.models.checkpoint import register_resolver


@register_resolver
def _resolve_hf(ref: str, *, weights=None, trust_pickle: bool = False, **kwargs):
    from clipforge.models.convert.hf import is_hf_dir, load_hf_dir

    if ref.startswith("hf:"):
        from clipforge.models.convert.hub import download_hf

        path = download_hf(ref[3:])
        if not is_hf_dir(path):
            from clipforge.errors import ClipforgeError

            raise ClipforgeError(f"{ref}: not a CLIP or SigLIP model (config.json model_type must be clip/siglip)")
        return load_hf_dir(path, trust_pickle=trust_pickle)
    if is_hf_dir(ref):
        return load_hf_dir(ref, trust_pickle=trust_pickle)
    return None


@register_resolver
def _resolve_open_clip(ref: str, *, weights=None, trust_pickle: bool = False, **kwargs):
    from clipforge.models.convert.open_clip import is_open_clip_dir, load_open_clip, load_open_clip_dir

    if is_open_clip_dir(ref):
        return load_open_clip_dir(ref, trust_pickle=trust_pickle)
    if not ref.startswith("open_clip:"):
        return None

    return load_open_clip(ref[len("open_clip:"):], weights=weights, trust_pickle=trust_pickle)


@register_resolver
def _resolve_state_dict_file(ref: str, *, weights=None, trust_pickle: bool = False, vision_heads=None,
                             text_heads=None, **kwargs):
    p = Path(ref)
    if not (p.is_file() and p.suffix in (".safetensors", ".pt", ".pth", ".bin")):
        return None
    from clipforge.models.checkpoint import read_state_dict
    from clipforge.models.convert.openai import load_openai_state

    return load_openai_state(read_state_dict(p, trust_pickle=trust_pickle), source=str(p),
                             vision_heads=vision_heads, text_heads=text_heads)
