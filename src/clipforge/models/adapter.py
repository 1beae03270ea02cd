"""Adapter directories: a LoRA / Comp-LoRA adapter saved apart from its base model, and loaded back onto it.

    save_adapter(model, "runs/lora/final", base_model="runs/digits/final")
    model = load_model("runs/digits/final+runs/lora/final")    # base + adapter (models/loading.py)
    model = load_model("runs/lora/final")                       # the base named in the adapter's config

An adapter directory holds `adapter_config.json` (`{"format": "clipforge-adapter", "format_version",
"lora": {method, rank, alpha, dropout, targets, towers, layers, comp_k, comp_side}, "modules": [...],
"base_model": reference, "base_hash": sha256, "num_parameters"}`) and `adapter.safetensors` (the factors
`<module>.lora_A` (r, in), `<module>.lora_B` (out, r), and Comp-LoRA's fixed bases). It is written atomically
(temp dir + rename). Loading checks the base's content hash (`base_hash`, over every base tensor), so an
adapter never silently lands on weights it was not trained for. `extra(tmp)` lets the trainer add its state to
the same directory inside the same rename. For peft's own format (HF module names) see
`clipforge.models.convert.peft_export`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from safetensors.torch import save_file

from clipforge.atomic import atomic_directory
from clipforge.errors import ClipforgeError, UsageError
from clipforge.json_file import read_json_file
from clipforge.models.checkpoint import (check_finite, check_header_shapes, load_safetensors, load_state_dict_strict,
                                         read_safetensors_header)
from clipforge.models.factory import build_model
from clipforge.models.lora import (LoRAConfig, adapter_shapes, apply_lora, check_adapter_memory, has_lora, lora_modules,
                                   lora_state_dict, target_names)
from clipforge.models.unwrap import unwrap_model

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "FORMAT", "base_hash", "save_adapter", "is_adapter_dir",
           "read_adapter_config", "attach_adapter", "split_adapter_ref", "base_reference", "merged_model"]

FORMAT = "clipforge-adapter"
FORMAT_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
PathLike = Union[str, Path]


def base_hash(model) -> str:
    """sha256 over the base model's tensors (names, dtypes, shapes, bytes; adapter tensors excluded), as float32
    for floating tensors so a hash does not depend on the precision a model was later cast to."""
    model = unwrap_model(model)
    adapter_keys = set(lora_state_dict(model))
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name in adapter_keys:
            continue
        t = t.detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def base_reference(ref: str) -> str:
    """How an adapter names its base: local paths absolute (found from any working directory), others as given."""
    p = Path(ref)
    return str(p.resolve()) if p.exists() else str(ref)


def save_adapter(model, path: PathLike, *, base_model: Optional[str] = None, base_sha256: Optional[str] = None,
                 extra: Optional[Callable[[Path], None]] = None, overwrite: bool = False) -> Path:
    """Write `model`'s adapter (not its base weights) as an adapter directory at `path`, atomically.

    `base_model`: the reference the base loads from (default: the one the adapter was loaded with, if any);
    `base_sha256`: the base's content hash when already known (default: computed now).
    """
    model = unwrap_model(model)
    if not has_lora(model):
        raise UsageError("this model carries no adapter to save (apply_lora or load one first)")
    cfg: LoRAConfig = model.lora_config
    base_model = base_model or getattr(model, "adapter_base", None)
    if not base_model:
        raise UsageError("`base_model` is needed: the reference the base model loads from")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "lora": cfg.to_dict(),
            "modules": sorted(lora_modules(model)), "base_model": base_reference(str(base_model)),
            "base_hash": base_sha256 or getattr(model, "adapter_base_hash", None) or base_hash(model),
            "num_parameters": sum(m.lora_A.numel() + m.lora_B.numel() for m in lora_modules(model).values())}
    state = {k: v.contiguous().cpu().float() for k, v in lora_state_dict(model).items()}

    def write(tmp: Path) -> None:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2))
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if extra is not None:
            extra(tmp)

    return atomic_directory(path, write, kind="adapter", overwrite=overwrite,
                            recognise=is_adapter_dir)


def read_adapter_config(path: PathLike) -> Optional[dict]:
    """The adapter config of a directory, or None when it is not a clipforge adapter directory."""
    f = Path(path) / ADAPTER_CONFIG
    if not f.is_file():
        return None
    meta = read_json_file(f)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if meta.get("format_version", 1) > FORMAT_VERSION:
        raise ClipforgeError(f"{path} was written by a newer clipforge (adapter format {meta['format_version']})")
    for key in ("lora", "modules", "base_model", "base_hash"):
        if key not in meta:
            raise ClipforgeError(f"{f} lacks {key!r}")
    return meta


def is_adapter_dir(path: PathLike) -> bool:
    try:
        return read_adapter_config(path) is not None
    except ClipforgeError:
        return True  # it claims to be one: loading it reports what is wrong


def split_adapter_ref(ref: str) -> tuple[Optional[str], Optional[str]]:
    """`BASE+ADAPTER_DIR` -> (BASE, ADAPTER_DIR); an adapter directory alone -> (None, dir); else (None, None).

    The split is at the last `+` whose right-hand side is an adapter directory, so a `+` inside a path is fine.
    """
    if "+" in ref:
        base, _, adapter = ref.rpartition("+")
        if base and is_adapter_dir(adapter):
            return base, adapter
    if is_adapter_dir(ref):
        return None, ref
    return None, None


def attach_adapter(model, path: PathLike, *, check_base: bool = True, base_model: Optional[str] = None):
    """Apply the adapter saved at `path` onto `model` (in place) and return it. With `check_base`, a base whose
    content hash differs from the one the adapter was trained on is an error."""
    meta = read_adapter_config(path)
    if meta is None:
        raise UsageError(f"{path} is not a clipforge adapter directory (no {ADAPTER_CONFIG} in clipforge's format)")
    if check_base:
        got = base_hash(model)
        if got != meta["base_hash"]:
            raise UsageError(f"adapter {path} was trained on a base with content hash {meta['base_hash'][:12]}, "
                             f"but the base given ({base_model or meta['base_model']}) has {got[:12]}: "
                             "load the adapter onto its own base")
    if not isinstance(meta["lora"], dict):
        raise ClipforgeError(f"{path}/{ADAPTER_CONFIG}: \"lora\" must be an object (the adapter's options)")
    try:
        cfg = LoRAConfig.from_dict(meta["lora"])
    except UsageError as e:  # the stored options, named as the file holds them
        raise ClipforgeError(f"{path}/{ADAPTER_CONFIG}: lora.{str(e).replace('`', '')}"
                             if str(e).startswith("`") else f"{path}/{ADAPTER_CONFIG}: {e}") from None
    weights = Path(path) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ClipforgeError(f"{path} has no {ADAPTER_WEIGHTS}")
    # Everything is checked before a factor is allocated: the layers the config selects against the ones it
    # lists, the file's header against the shapes they give, their bytes against the memory budget.
    names = target_names(model, cfg)
    if not isinstance(meta["modules"], list) or sorted(names) != sorted(map(str, meta["modules"])):
        raise ClipforgeError(f"{path}: its config selects {len(names)} layers of this base, but it lists "
                             f"{len(meta['modules']) if isinstance(meta['modules'], list) else 'no list of'} "
                             "modules: not an adapter for this architecture")
    check_header_shapes(read_safetensors_header(weights), adapter_shapes(model, cfg, names),
                        f"adapter weights in {path}")
    check_adapter_memory(model, cfg, names)
    state = load_safetensors(weights)
    check_finite(state, f"adapter weights in {path}")
    apply_lora(model, cfg, freeze=False)
    mods = lora_modules(model)
    with torch.no_grad():
        for key, t in state.items():
            name, _, attr = key.rpartition(".")
            getattr(mods[name], attr).copy_(t.to(getattr(mods[name], attr).dtype))
    model.adapter_base = base_model or meta["base_model"]
    if check_base:
        model.adapter_base_hash = meta["base_hash"]  # verified above; saving again need not re-hash
    model.adapter_path = str(path)
    return model


def merged_model(model):
    """A new plain model whose weights are `model`'s base with every adapter update folded in (W + dW); `model`
    is left as it is. Same config, tokenizer, device and dtype."""
    model = unwrap_model(model)
    if not has_lora(model):
        raise UsageError("this model carries no adapter to merge")
    adapter_keys = set(lora_state_dict(model))
    state = {k: v.detach() for k, v in model.state_dict().items() if k not in adapter_keys}
    with torch.no_grad():
        for name, mod in lora_modules(model).items():
            state[f"{name}.weight"] = mod.weight + mod.delta_weight().to(mod.weight.dtype)
    out = build_model(model.config, tokenizer=model.tokenizer).to(device=model.device, dtype=model.dtype)
    load_state_dict_strict(out, state, "merged adapter weights")
    return out.train(model.training)
