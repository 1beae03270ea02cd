"""The clipforge checkpoint format: writing and reading checkpoint directories (no model construction here;
`loading.py` builds models from what this reads).

A clipforge checkpoint is a directory: `config.json` (model config), `model.safetensors`, `tokenizer.json` +
`tokenizer_config.json`, `preprocess.json`. It is written to a temporary sibling directory and renamed into
place, so a crash never leaves a half-written checkpoint under the final name.

Pickled `.pt/.bin` weights are refused unless the caller passes `trust_pickle=True`, and are then read with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from clipforge.atomic import atomic_directory
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.config import CLIPConfig
from clipforge.models.tokenizer import Tokenizer
from clipforge.models.unwrap import unwrap_model

__all__ = ["FORMAT", "FORMAT_VERSION", "save_pretrained", "is_checkpoint_dir", "read_checkpoint_dir",
           "read_state_dict", "load_state_dict_strict"]

FORMAT = "clipforge"
FORMAT_VERSION = 1
PathLike = Union[str, Path]


def save_pretrained(model, path: PathLike, extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Write `model` as a checkpoint directory at `path`, atomically (temp dir + rename).

    `extra(tmp_dir)` may write more files (e.g. the trainer's state) before the directory is renamed into
    place, so they appear together with the weights or not at all.
    """
    model = unwrap_model(model)
    cfg = model.config

    def write(tmp: Path) -> None:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict()}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
        pre = dict(dataclasses.asdict(cfg.preprocess), image_size=cfg.vision.image_size)
        (tmp / "preprocess.json").write_text(json.dumps(pre, indent=2))
        if extra is not None:
            extra(tmp)

    return atomic_directory(path, write)


def is_checkpoint_dir(path: PathLike) -> bool:
    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    try:
        return json.loads((p / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_checkpoint_dir(path: PathLike) -> tuple[CLIPConfig, Optional[Tokenizer], dict]:
    """(config, tokenizer or None, state dict) of a checkpoint directory."""
    p = Path(path)
    meta = json.loads((p / "config.json").read_text())
    if meta.get("format_version", 1) > FORMAT_VERSION:
        raise ClipforgeError(f"{p} was written by a newer clipforge (format {meta['format_version']})")
    cfg = CLIPConfig.from_dict(meta["config"])
    tok = Tokenizer.load(p) if (p / "tokenizer.json").exists() else None
    return cfg, tok, load_file(str(p / "model.safetensors"))


def read_state_dict(path: PathLike, *, trust_pickle: bool = False) -> dict:
    """Weights from `.safetensors`, or from a pickle only when the caller trusts it (weights_only=True)."""
    p = Path(path)
    if not p.exists():
        raise ClipforgeError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    if not trust_pickle:
        raise UsageError(f"refusing to load pickled weights {p.name}: pickles can run code. Convert to "
                         ".safetensors, or pass `trust_pickle` if you trust the file")
    obj = torch.load(str(p), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ClipforgeError(f"{p.name} does not hold a state dict")
    return obj


def load_state_dict_strict(model, state: dict, source: str = "weights") -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ClipforgeError(f"{source} do not match the model: missing {sorted(missing)[:10]}"
                             f"{'...' if len(missing) > 10 else ''}, unexpected {sorted(unexpected)[:10]}"
                             f"{'...' if len(unexpected) > 10 else ''}")
