"""The OpenVINO engine: the same cached ONNX towers, compiled by OpenVINO's CPU plugin.

One `openvino.Core` serves the whole process (`shared_core`): Cores freed in the order they were made leave
a thread on a freed alternate signal stack, and its next signal kills the process (the story, and the test that
reproduces it: docs/design_notes.md).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from clipforge.encode.engine import ENGINES
from clipforge.encode.exported import ExportedEngine, cache_dir
from clipforge.encode.precision import BF16_MIN_PARAMS, cpu_has_native_bf16
from clipforge.errors import UsageError
from clipforge.registry import Option

__all__ = ["OpenVinoEngine", "openvino_available", "shared_core"]

_CORE = None
_CORE_LOCK = threading.Lock()


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def shared_core():
    """The process's one `openvino.Core` (created on first use; see the module docstring for why one)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            try:
                import openvino as ov
            except ImportError:
                raise UsageError("engine 'openvino' needs openvino: pip install 'clipforge[openvino]'") from None
            _CORE = ov.Core()
        return _CORE


@ENGINES.register("openvino")
class OpenVinoEngine(ExportedEngine):
    """OpenVINO on the CPU: fp32 (parity with torch within 1e-4 cosine distance), bf16 inference on CPUs that
    multiply bf16 natively, or the dynamic int8 graph.

    "auto" picks bf16 where the CPU has native bf16 (avx512_bf16 / AMX) and the model has 20M+ parameters,
    else fp32 — the torch engine's policy. Compiled models are cached by OpenVINO itself (its CACHE_DIR, under
    the clipforge cache), so a second process starts faster.
    """

    options = tuple(o if o.name != "precision" else
                    Option("precision", str, help="auto | fp32 | bf16 (native-bf16 CPUs) | int8")
                    for o in ExportedEngine.options)
    precisions = ("auto", "fp32", "bf16", "int8")

    def _resolve(self, precision):
        if precision in (None, "auto"):
            big = sum(p.numel() for p in self.model.parameters()) >= BF16_MIN_PARAMS
            return "bf16" if cpu_has_native_bf16() and big else "fp32"
        return precision

    def __init__(self, model, device=None, precision=None, threads=None, cache_dir=None):
        self._cache = cache_dir
        super().__init__(model, device=device, precision=precision, threads=threads, cache_dir=cache_dir)

    def _load(self, path: Path):
        hint = "bf16" if self.precision == "bf16" else "f32"  # int8 graphs keep f32 activations between ops
        return shared_core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": self.threads,
                                                              "INFERENCE_PRECISION_HINT": hint,
                                                              "PERFORMANCE_HINT": "LATENCY",
                                                              "CACHE_DIR": str(cache_dir(self._cache) / "openvino")})

    def _run(self, graph, x: np.ndarray) -> np.ndarray:
        return graph(x)[0]
