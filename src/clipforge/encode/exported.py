"""What the engines that run exported graphs (ONNX Runtime, OpenVINO) share: the cache of exported towers,
thread and precision choices, trimming and normalisation.

Exported graphs are cached per model fingerprint (config + every weight, `models.onnx_export.model_fingerprint`)
and precision under the cache directory (`$CLIPFORGE_CACHE`, else `$XDG_CACHE_HOME/clipforge`, else
`~/.cache/clipforge`):

    onnx/<fingerprint>/fp32/image.onnx, text.onnx     exported once, read by every engine
    onnx/<fingerprint>/int8/image.onnx, text.onnx     dynamic int8 quantisation of the Linear layers (MatMul/Gemm)

Each directory appears complete or not at all (written as a temporary sibling, then renamed), so concurrent
processes never read a half-written graph; two that export at once both write and the second rename wins.
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clipforge.atomic import atomic_directory
from clipforge.encode.device import pick_device
from clipforge.encode.engine import Engine, check_precision
from clipforge.errors import UsageError
from clipforge.models.onnx_export import export_tower, model_fingerprint
from clipforge.models.unwrap import unwrap_model
from clipforge.registry import Option

__all__ = ["cache_dir", "exported_graphs", "ExportedEngine", "EXPORTED_PRECISIONS"]

log = logging.getLogger(__name__)
EXPORTED_PRECISIONS = ("auto", "fp32", "int8")


def cache_dir(override=None) -> Path:
    """Where exported graphs and engine calibrations are kept."""
    if override:
        return Path(override)
    if os.environ.get("CLIPFORGE_CACHE"):
        return Path(os.environ["CLIPFORGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipforge"


def _quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMul / Gemm weights (activations quantised per batch at run time)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise UsageError("`precision` int8 needs onnxruntime (pip install 'clipforge[onnx]')") from None
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])


def exported_graphs(model, precision: str = "fp32", cache=None, fingerprint: Optional[str] = None) -> dict:
    """{"image": path, "text": path} of `model`'s towers in `precision` (fp32 | int8), exporting on a miss."""
    if precision not in ("fp32", "int8"):
        raise UsageError(f"`precision` {precision!r}: exported graphs are fp32 or int8")
    fp = fingerprint or model_fingerprint(model)
    root = cache_dir(cache) / "onnx" / fp
    paths = {t: root / precision / f"{t}.onnx" for t in ("image", "text")}
    if all(p.exists() for p in paths.values()):
        return paths
    if precision == "int8":
        fp32 = exported_graphs(model, "fp32", cache, fp)
        log.info("quantising %s to int8 in %s", model.config.name or "the model", root / "int8")
        atomic_directory(root / "int8", kind="onnx-graphs", write=lambda d: [_quantize_int8(fp32[t], d / f"{t}.onnx") for t in fp32])
        return paths
    log.info("exporting %s to ONNX in %s (once per model)", model.config.name or "the model", root / "fp32")
    m = model if next(model.parameters()).dtype == torch.float32 and model.device.type == "cpu" else \
        copy.deepcopy(model).float().cpu()
    atomic_directory(root / "fp32", kind="onnx-graphs", write=lambda d: [export_tower(m, t, d / f"{t}.onnx") for t in ("image", "text")])
    return paths


def default_threads() -> int:
    """torch's intra-op thread count (what the torch engine uses on this machine)."""
    return torch.get_num_threads()


class ExportedEngine(Engine):
    """Base of the engines that run `exported_graphs` on the CPU: subclasses load a graph (`_load`) and run
    one input through it (`_run`)."""

    options = (Option("device", str, help="cpu (exported graphs run on the CPU)"),
               Option("precision", str, help="auto | fp32 | int8 (dynamic int8 quantisation of the Linear layers)"),
               Option("threads", int, help="intra-op threads (default: torch's, i.e. the machine's cores)"),
               Option("cache_dir", str, help="where exported graphs are kept (default ~/.cache/clipforge)"))
    precisions: tuple = EXPORTED_PRECISIONS

    def __init__(self, model, device=None, precision: Optional[str] = None, threads: Optional[int] = None,
                 cache_dir: Optional[str] = None):
        model = unwrap_model(model)
        dev = pick_device(device) if device is not None else torch.device("cpu")
        if dev.type != "cpu":
            raise UsageError(f"engine {self.name!r} runs on the CPU; `device` {device} needs engine 'torch'")
        check_precision(self.name, precision)
        if threads is not None and threads < 1:
            raise UsageError(f"`threads` must be >= 1, got {threads}")
        self.model, self.device = model, dev
        self.precision = self._resolve(precision)
        self.threads = threads or default_threads()
        self.embed_dim = model.config.embed_dim
        self.preprocess, self.tokenizer = model.preprocess, model.tokenizer
        paths = exported_graphs(model, "int8" if self.precision == "int8" else "fp32", cache_dir)
        self._image, self._text = self._load(paths["image"]), self._load(paths["text"])

    def _resolve(self, precision: Optional[str]) -> str:
        return "fp32" if precision in (None, "auto") else precision

    def _load(self, path: Path):
        raise NotImplementedError

    def _run(self, graph, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _finish(self, out: np.ndarray, normalize: bool) -> torch.Tensor:
        y = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        return torch.nn.functional.normalize(y, dim=-1) if normalize else y

    def encode_pixels(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if not len(pixels):
            return torch.zeros(0, self.embed_dim)
        x = pixels.detach().float().cpu().contiguous().numpy()  # (B, 3, H, W)
        return self._finish(self._run(self._image, x), normalize)

    def encode_tokens(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if not len(token_ids):
            return torch.zeros(0, self.embed_dim)
        ctx = self.model.config.text.context_length
        if token_ids.shape[1] > ctx:
            raise UsageError(f"token sequence of length {token_ids.shape[1]} exceeds context_length {ctx}")
        ids = self.model.text.trim(token_ids.detach().cpu().long())  # (B, T'): exact for causal towers
        return self._finish(self._run(self._text, ids.contiguous().numpy()), normalize)

    def describe(self) -> dict:
        return {**super().describe(), "threads": self.threads}
