"""Checkpoint directories and model references.

A clipforge checkpoint is a directory: `config.json` (model config), `model.safetensors`, `tokenizer.json` +
`tokenizer_config.json`, `preprocess.json`. It is written to a temporary sibling directory and renamed into
place, so a crash never leaves a half-written checkpoint under the final name.

`load_model(ref)` accepts a registered name (random init), a checkpoint directory, or any reference a
registered resolver understands (`hf:ORG/NAME`, `open_clip:ARCH/TAG`, ... added by the converters).
Pickled `.pt/.bin` weights are refused unless the caller passes `trust_pickle=True`, and are then read with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, List, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from clipforge.atomic import atomic_directory
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.config import CLIPConfig, get_model_config, list_models
from clipforge.models.tokenizer import Tokenizer, default_tokenizer

FORMAT = "clipforge"
FORMAT_VERSION = 1
PathLike = Union[str, Path]
# A resolver takes (ref, **kwargs) and returns a CLIPModel, or None when the reference is not its kind.
_RESOLVERS: List[Callable] = []


def register_resolver(fn: Callable) -> Callable:
    """Add a model-reference resolver (e.g. for `hf:` or `open_clip:` references)."""
    _RESOLVERS.append(fn)
    return fn


def create_model(name: str, *, tokenizer: Optional[Tokenizer] = None, device=None, **overrides):
    """A randomly initialised model from a registered config, with its tokenizer and preprocessing."""
    cfg = get_model_config(name, **overrides)
    return build_model(cfg, tokenizer=tokenizer, device=device)


def build_model(cfg: CLIPConfig, *, tokenizer: Optional[Tokenizer] = None, device=None):
    from clipforge.models.clip import CLIPModel

    tok = tokenizer or default_tokenizer(cfg.text.context_length)
    if tok.vocab_size > cfg.text.vocab_size:
        raise UsageError(f"tokenizer has {tok.vocab_size} ids but the text tower only {cfg.text.vocab_size}: "
                         f"set text.vocab_size >= {tok.vocab_size}")
    model = CLIPModel(cfg, tokenizer=tok)
    return model.to(device) if device is not None else model


def save_pretrained(model, path: PathLike, extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Write `model` as a checkpoint directory at `path`, atomically (temp dir + rename).

    `extra(tmp_dir)` may write more files (e.g. the trainer's state) before the directory is renamed into
    place, so they appear together with the weights or not at all.
    """
    model = getattr(model, "module", model)
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


def read_state_dict(path: PathLike, *, trust_pickle: bool = False) -> dict:
    """Weights from `.safetensors`, or from a pickle only when the caller trusts it (weights_only=True)."""
    p = Path(path)
    if not p.exists():
        raise ClipforgeError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    if not trust_pickle:
        raise UsageError(f"refusing to load pickled weights {p.name}: pickles can run code. Convert to "
                         ".safetensors, or pass trust_pickle=True (CLI: --trust-pickle) if you trust the file")
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


def load_checkpoint_dir(path: PathLike, device=None):
    p = Path(path)
    meta = json.loads((p / "config.json").read_text())
    if meta.get("format_version", 1) > FORMAT_VERSION:
        raise ClipforgeError(f"{p} was written by a newer clipforge (format {meta['format_version']})")
    cfg = CLIPConfig.from_dict(meta["config"])
    tok = Tokenizer.load(p) if (p / "tokenizer.json").exists() else None
    model = build_model(cfg, tokenizer=tok)
    load_state_dict_strict(model, load_file(str(p / "model.safetensors")), f"weights in {p}")
    return model.to(device) if device is not None else model


def load_model(ref: Union[str, PathLike], *, weights: Optional[PathLike] = None, trust_pickle: bool = False,
               device=None, **kwargs):
    """Resolve a model reference: registered name, checkpoint directory, or a resolver's reference."""
    ref_s = str(ref)
    if is_checkpoint_dir(ref_s):
        model = load_checkpoint_dir(ref_s)
    elif ref_s in list_models():
        model = create_model(ref_s, **kwargs)
        if weights is not None:
            load_state_dict_strict(model, read_state_dict(weights, trust_pickle=trust_pickle), str(weights))
    else:
        import clipforge.models.convert  # noqa: F401  (registers the hf:/open_clip:/OpenAI resolvers)

        model = None
        for resolver in _RESOLVERS:
            model = resolver(ref_s, weights=weights, trust_pickle=trust_pickle, **kwargs)
            if model is not None:
                break
        if model is None:
            hint = "a directory without config.json" if Path(ref_s).is_dir() else "not found"
            raise UsageError(f"cannot load model {ref_s!r}: not a registered name ({', '.join(list_models())}), "
                             f"not a clipforge checkpoint directory ({hint}), and no converter recognises it "
                             "(hf:ORG/NAME, open_clip:ARCH/TAG, or a local HF/OpenAI checkpoint)")
    return model.to(device) if device is not None else model
