"""ONNX export of a model's towers, each on its own: pixels -> embedding, token ids -> embedding.

    export_tower(model, "image", "img.onnx")   # input "pixels" (B, 3, H, W) float32 -> "embedding" (B, D)
    export_tower(model, "text", "txt.onnx")    # input "ids" (B, T) int64 -> "embedding" (B, D)

Both graphs have a dynamic batch axis; the text graph also a dynamic sequence length, so an engine can trim
the padding columns after every row's end token first (`TextTower.trim`, exact for causal towers) exactly as
the torch path does. Embeddings are not normalised inside the graph (engines normalise, as `encode_*` do).
The graph is written to a temporary sibling and renamed; a model over protobuf's 2 GB limit keeps its weights
in one external-data file beside the graph.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from clipforge.atomic import atomic_write_path
from clipforge.errors import ClipforgeError, UsageError

__all__ = ["TOWERS", "OPSET", "export_tower", "model_fingerprint"]

TOWERS = ("image", "text")
OPSET = 18  # LayerNormalization (17+), scaled_dot_product_attention exports as MatMul/Softmax


class _ImageTower(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.visual = model.visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D)
        return self.visual(pixels).pooled


class _TextTower(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.text = model.text

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, D)
        return self.text.embed(ids).pooled


def model_fingerprint(model) -> str:
    """A hash of a model's config and every tensor (name, dtype, shape, bytes): equal hashes, equal graphs."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _example(model, tower: str) -> tuple[torch.Tensor, ...]:
    if tower == "image":
        size = model.config.vision.image_size
        return (torch.zeros(2, 3, size, size),)
    ctx = model.config.text.context_length
    ids = torch.ones(2, min(ctx, 8), dtype=torch.long)
    ids[:, -1] = model.config.text.vocab_size - 1  # an end token, as real rows have
    return (ids,)


def export_tower(model, tower: str, path, *, opset: int = OPSET) -> Path:
    """Write `model`'s `tower` ("image" or "text") as an fp32 ONNX graph at `path` (atomically)."""
    if tower not in TOWERS:
        raise UsageError(f"`tower` must be one of {', '.join(TOWERS)}, got {tower!r}")
    if next(model.parameters()).dtype != torch.float32 or model.device.type != "cpu":
        raise UsageError("`model` must be fp32 on the CPU to export (its weights are cast for inference "
                         "only after export)")
    was_training = model.training
    model.eval()
    wrapper = _ImageTower(model) if tower == "image" else _TextTower(model)
    name = "pixels" if tower == "image" else "ids"
    axes = {name: {0: "batch"} if tower == "image" else {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = sum(p.numel() * 4 for p in model.parameters()) > 1.8e9

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python ints in shapes (dynamic axes)
            torch.onnx.export(wrapper, _example(model, tower), tmp, input_names=[name],
                              output_names=["embedding"], dynamic_axes=axes, opset_version=opset,
                              dynamo=False, do_constant_folding=True)
        if big:  # protobuf's 2 GB limit: the weights go to one external file beside the graph
            import onnx

            onnx.save_model(onnx.load(tmp), tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data")

    try:
        atomic_write_path(path, write)
    except Exception as e:  # noqa: BLE001 - any exporter failure: say which model and tower
        raise ClipforgeError(f"could not export the {tower} tower of {model.config.name or 'this model'} to "
                             f"ONNX: {type(e).__name__}: {e}") from None
    finally:
        model.train(was_training)
    return path
