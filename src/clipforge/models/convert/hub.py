"""Hugging Face Hub downloads for `hf:ORG/NAME[@REVISION]` references.

Uses huggingface_hub's cache (HF_HOME / HF_HUB_CACHE), so a model fetched once loads offline afterwards.
`HF_HUB_OFFLINE=1` (or `offline=True`) never touches the network: a cached snapshot is used or a clear error
says it is not cached. Any network failure becomes one ClipforgeError naming the reference and what to do.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from clipforge.errors import ClipforgeError, UsageError

# Only the files a CLIP/SigLIP directory needs (not TF/Flax/ONNX weights or pickles when safetensors exist).
ALLOW = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.json", "merges.txt", "spiece.model", "preprocessor_config.json",
         "open_clip_config.json"]


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def network_error(ref: str, exc: BaseException) -> ClipforgeError:
    return ClipforgeError(
        f"cannot download {ref}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
        "The model hub is unreachable from here and the model is not in the local cache. Download it where the "
        "network is available (huggingface-cli download ORG/NAME) and copy the cache (HF_HOME), or pass a local "
        "directory instead of the hf: reference")


def parse_repo(spec: str):
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UsageError(f"hf:{spec}: expected hf:ORG/NAME or hf:ORG/NAME@REVISION")
    return repo, revision or None


def download_hf(spec: str, *, cache_dir: Optional[str] = None, offline: Optional[bool] = None) -> Path:
    """Local directory holding a snapshot of `ORG/NAME[@REVISION]` (from the cache when possible)."""
    repo, revision = parse_repo(spec)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ClipforgeError("hf: references need huggingface_hub (pip install huggingface_hub)") from e
    offline = offline_mode() if offline is None else offline
    kw = dict(repo_id=repo, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW)
    try:
        return Path(snapshot_download(local_files_only=True, **kw))  # cached: no network round-trip at all
    except Exception as cached_exc:  # LocalEntryNotFoundError and friends
        if offline:
            raise ClipforgeError(f"hf:{spec} is not in the local Hugging Face cache and offline mode is on "
                                 "(HF_HUB_OFFLINE=1); unset it on a machine with network access, or pass a local "
                                 "directory") from cached_exc
    try:
        path = Path(snapshot_download(**kw))
    except Exception as e:
        name = type(e).__name__
        if name in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
            raise ClipforgeError(f"hf:{spec}: {name} ({str(e).splitlines()[0]})") from e
        raise network_error(f"hf:{spec}", e) from e
    if not any(path.glob("*.safetensors")):
        raise ClipforgeError(f"hf:{spec} has no .safetensors weights; download it yourself and convert, or load the "
                             "directory with trust_pickle=True if you trust its pytorch_model.bin")
    return path
