"""Pretrained model references clipforge knows how to fetch and convert, with their sizes.

Sizes are the published fp32 checkpoints (parameters, and the download: the safetensors file plus small
config/tokenizer files). `needs_network` is computed, not declared: an `hf:` reference already in the local
Hugging Face cache loads offline; open_clip tags are looked up in open_clip's own download cache by open_clip.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List

from clipforge.models.convert.hub import ALLOW, parse_repo


@dataclass(frozen=True)
class Pretrained:
    ref: str  # what load_model / --model accepts
    family: str  # clip | siglip
    parameters_m: float  # millions of parameters
    download_mb: int  # approximate download size (fp32 weights)
    image_size: int
    note: str = ""


KNOWN: List[Pretrained] = [
    Pretrained("hf:openai/clip-vit-base-patch32", "clip", 151.3, 605, 224, "OpenAI ViT-B/32 (QuickGELU)"),
    Pretrained("hf:openai/clip-vit-base-patch16", "clip", 149.6, 599, 224, "OpenAI ViT-B/16 (QuickGELU)"),
    Pretrained("hf:openai/clip-vit-large-patch14", "clip", 427.6, 1710, 224, "OpenAI ViT-L/14 (QuickGELU)"),
    Pretrained("hf:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "clip", 151.3, 605, 224, "LAION-2B ViT-B/32 (GELU)"),
    Pretrained("hf:google/siglip-base-patch16-224", "siglip", 203.2, 813, 224, "SigLIP B/16, sigmoid head"),
    Pretrained("hf:google/siglip-so400m-patch14-384", "siglip", 878.0, 3510, 384, "SigLIP so400m/14 @384"),
    Pretrained("open_clip:ViT-B-32/openai", "clip", 151.3, 605, 224, "needs open_clip_torch"),
    Pretrained("open_clip:ViT-B-32/laion2b_s34b_b79k", "clip", 151.3, 605, 224, "needs open_clip_torch"),
    Pretrained("open_clip:ViT-B-16/laion2b_s34b_b88k", "clip", 149.6, 599, 224, "needs open_clip_torch"),
    Pretrained("open_clip:ViT-L-14/openai", "clip", 427.6, 1710, 224, "needs open_clip_torch"),
]


def is_cached(ref: str) -> bool:
    """True when `ref` loads without network access (an hf: snapshot already in the local cache)."""
    if not ref.startswith("hf:"):
        return False
    try:
        from huggingface_hub import snapshot_download


        repo, rev = parse_repo(ref[3:])
        snapshot_download(repo_id=repo, revision=rev, allow_patterns=ALLOW, local_files_only=True)
        return True
    except Exception:
        return False


def list_pretrained() -> List[dict]:
    rows = []
    for p in KNOWN:
        row = asdict(p)
        row["needs_network"] = not is_cached(p.ref)
        rows.append(row)
    return rows
