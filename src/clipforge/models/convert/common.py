"""Shared pieces of the converters: key accounting, fused-qkv helpers, exact MLP ratios, model assembly.

Every converter reads a foreign state dict through a `KeyReader`, which remembers which keys it consumed;
anything left over at the end is an error that lists the keys (a silently ignored tensor is a silently
different model).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import torch

from clipforge.atomic import atomic_directory
from clipforge.errors import ClipforgeError
from clipforge.models.checkpoint import load_state_dict_strict
from clipforge.models.factory import build_model

StateDict = Dict[str, torch.Tensor]

# Foreign activation names -> native VisionConfig/TextConfig.act. "gelu_new" is GPT-2's tanh formula, the
# same function as torch's tanh approximation (differences ~1e-7).
ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
        "gelu_tanh": "gelu_tanh"}
# The reverse map used when exporting to HF: one canonical name per native activation.
HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def native_act(name: str, where: str) -> str:
    if name not in ACTS:
        raise ClipforgeError(f"{where}: activation {name!r} has no native equivalent; supported: {', '.join(ACTS)}")
    return ACTS[name]


class KeyReader:
    """Pops tensors from a foreign state dict by key; `finish()` raises if any key was not consumed."""

    def __init__(self, state: StateDict, source: str, ignore: Iterable[str] = ()):
        self.state = dict(state)
        self.source = source
        for k in ignore:  # non-weight entries some layouts carry (buffers, metadata)
            self.state.pop(k, None)

    def has(self, key: str) -> bool:
        return key in self.state

    def pop(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise ClipforgeError(f"{self.source}: missing key {key!r}")
        return self.state.pop(key)

    def pop_opt(self, key: str) -> Optional[torch.Tensor]:
        return self.state.pop(key, None)

    def finish(self) -> None:
        if self.state:
            keys = sorted(self.state)
            raise ClipforgeError(f"{self.source}: {len(keys)} key(s) have no place in the native model "
                                 f"(unsupported variant?): {keys[:20]}{' ...' if len(keys) > 20 else ''}")


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Separate q/k/v projections (W, W) or biases (W,) -> the fused (3W, ...) in_proj layout."""
    return torch.cat([q, k, v], dim=0)


def split_qkv(qkv: torch.Tensor):
    """Fused (3W, ...) -> q, k, v."""
    return qkv.chunk(3, dim=0)


def mlp_ratio(hidden: int, width: int, where: str) -> float:
    """A float r with int(width * r) == hidden exactly (the native MLP builds int(width * mlp_ratio))."""
    r = hidden / width
    for cand in (r, math.nextafter(r, math.inf)):
        if int(width * cand) == hidden:
            return cand
    raise ClipforgeError(f"{where}: MLP hidden size {hidden} is not expressible as width {width} x ratio")


def mlp_hidden(width: int, ratio: float) -> int:
    return int(width * ratio)


def assemble(cfg, state: StateDict, tokenizer=None, source: str = "weights"):
    """Build the native model for `cfg` and load `state` strictly (every native key must be filled). A tokenizer
    of another context length is given the model's: a copy where it can be (a caller's object stays as it was)."""
    if tokenizer is not None and tokenizer.context_length != cfg.text.context_length:
        if hasattr(tokenizer, "with_options"):
            tokenizer = tokenizer.with_options(context_length=cfg.text.context_length)
        else:
            tokenizer.context_length = cfg.text.context_length
    model = build_model(cfg, tokenizer=tokenizer)
    load_state_dict_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, source)
    return model.eval()


def write_dir_atomically(path: Path, write: Callable[[Path], None], *, kind: str, overwrite: bool = False,
                         recognise: Optional[Callable[[Path], bool]] = None) -> Path:
    """Run `write(tmp_dir)` on a temporary sibling of `path`, then rename it into place: replacing `path` only
    when it is empty or an earlier `kind` export (`recognise`: one an older version wrote), or `overwrite`."""
    return atomic_directory(path, write, kind=kind, overwrite=overwrite, recognise=recognise)
