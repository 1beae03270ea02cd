"""The engine seam: what actually runs a model's two towers.

An `Engine` wraps one model's image and text towers behind two calls, `encode_pixels` and `encode_tokens`,
and carries the model's preprocessing and tokenizer. Everything that encodes (embedding, evaluation, index
builds, queries, classification) goes through an engine, never `model.encode_image` directly, so another
runtime is one new module registering one class here (torch_engine.py, onnx_engine.py, openvino_engine.py;
auto.py measures them and builds the fastest):

    @ENGINES.register("onnx")
    class OnnxEngine(Engine):
        options = (Option("providers", str, help="..."),)
        def __init__(self, model, device=None, precision=None, providers=None): ...

`create_engine("torch", model, device="cpu", precision="auto")` builds one with its options checked.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch
from PIL import Image

from clipforge.errors import UsageError
from clipforge.registry import Option, Registry

__all__ = ["Engine", "ENGINES", "create_engine", "list_engines", "check_precision"]

ENGINES = Registry("inference engine", param="engine")


class Engine(ABC):
    """Runs a model's towers. Outputs are float32 CPU tensors (B, D), L2-normalised unless asked otherwise.

    Attributes every engine sets: `model` (the clipforge model it was built from), `device`, `precision`
    (the resolved one: fp32 | bf16 | fp16), `embed_dim`, `preprocess` (PIL image -> (3, H, W) tensor) and
    `tokenizer` (list of texts -> (B, T) ids).
    """

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ()  # the `precision` values it accepts
    device: torch.device
    precision: str
    embed_dim: int
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]

    @abstractmethod
    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, D) float32 on the CPU."""

    @abstractmethod
    def encode_tokens(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T) token ids -> (B, D) float32 on the CPU."""

    def describe(self) -> dict:
        return {"engine": self.name, "device": str(self.device), "precision": self.precision}


def check_precision(name: str, precision) -> None:
    """Refuse a `precision` engine `name` does not offer, in one message for every command: what it offers, and
    which engines offer the one asked for."""
    if precision is None:
        return
    offered = ENGINES.get(name).precisions
    if precision in offered:
        return
    elsewhere = [n for n in ENGINES.names() if precision in ENGINES.get(n).precisions]
    raise UsageError(f"`precision` {precision!r} is not offered by `engine` {name} (it offers {', '.join(offered)})"
                     + (f"; {precision} needs `engine` {', '.join(elsewhere)}" if elsewhere else ""))


def create_engine(name: str, model, **options) -> Engine:
    """An engine of kind `name` for `model` (`device`, `precision` and the engine's own options)."""
    check_precision(name, options.get("precision"))
    return ENGINES.create(name, model, **options)


def list_engines() -> list[str]:
    return ENGINES.names()
