"""`auto`: the fastest engine *measured* on this machine for this model, never assumed.

The first time a model is encoded with engine "auto" on a machine, every available engine that offers the
asked precision (torch, onnx, openvino) runs the model's two towers on a few synthetic batches — with 1
thread and with all of torch's threads for small models, where one thread can beat two on busy cores — and
the fastest (seconds per image + seconds per text) is kept. The measurements are cached per machine (CPU
model, flags, cores, library versions), model fingerprint and precision under the cache directory
(`calibration/*.json`, see `exported.cache_dir`), so later runs pick at once; `recalibrate=True` measures
again. The thread count never changes results: the exported engines give bit-identical outputs for any
thread count (tested), and torch, whose MKL matmuls round a few small products differently per thread count,
is only measured with the process's own. The engines agree within 1e-4 cosine distance in fp32 (tested), so
a pick that differs between machines moves embeddings by no more than that.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import time
from typing import Optional

import torch

from clipforge.atomic import atomic_write_json
from clipforge.encode.device import pick_device
from clipforge.encode.engine import ENGINES, Engine
from clipforge.encode.exported import cache_dir as _cache_dir
from clipforge.encode.onnx_engine import onnxruntime_available
from clipforge.encode.openvino_engine import openvino_available
from clipforge.encode.precision import BF16_MIN_PARAMS, precision_of, resolve_precision
from clipforge.models.onnx_export import model_fingerprint
from clipforge.models.unwrap import unwrap_model
from clipforge.registry import Option

__all__ = ["AutoEngine", "calibrate", "machine_fingerprint", "available_engines"]

log = logging.getLogger(__name__)
CALIBRATION_VERSION = 1
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def machine_fingerprint() -> dict:
    """What the measured speeds depend on: CPU model and flags, cores, threads, library versions."""
    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and not cpu:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    versions = {"torch": torch.__version__}
    for mod in ("onnxruntime", "openvino"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return {"cpu": cpu, "flags": sorted(f for f in _FLAGS if f in flags), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "machine": platform.machine(), "versions": versions}


def available_engines(precision: Optional[str]) -> list[str]:
    """Engines installed here that offer `precision` (None / auto: all)."""
    names = ["torch"] + (["onnx"] if onnxruntime_available() else []) + \
        (["openvino"] if openvino_available() else [])
    if precision in (None, "auto"):
        return names
    return [n for n in names if precision in ENGINES.get(n).precisions]


def _time(fn, reps: int = 3) -> float:
    fn()  # warm-up (allocations, lazy compilation)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _inputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    big = sum(p.numel() for p in model.parameters()) >= BF16_MIN_PARAMS
    g = torch.Generator().manual_seed(0)
    size = model.config.vision.image_size
    pixels = torch.randn(8 if big else 64, 3, size, size, generator=g)
    ctx, vocab = model.config.text.context_length, model.config.text.vocab_size
    n = min(ctx, 12)  # a caption-like row: ~12 tokens, end token last, padding after
    ids = torch.zeros(64, ctx, dtype=torch.long)
    ids[:, :n] = torch.randint(1, vocab - 1, (64, n), generator=g)
    ids[:, n - 1] = vocab - 1
    return pixels, ids


def calibrate(model, *, precision: Optional[str] = None, cache_dir=None, recalibrate: bool = False,
              candidates: Optional[list[str]] = None) -> dict:
    """Measure the candidate engines on `model` (cached). Returns {"choice": {"engine", "threads"},
    "measured": [{"engine", "threads", "image_s_per_item", "text_s_per_item", "score"}...], "machine", ...}."""
    model = unwrap_model(model)
    machine = machine_fingerprint()
    fp = model_fingerprint(model)
    cands = candidates or available_engines(precision)
    key = hashlib.sha256(json.dumps([CALIBRATION_VERSION, machine, fp, precision, cands],
                                    sort_keys=True).encode()).hexdigest()[:24]
    path = _cache_dir(cache_dir) / "calibration" / f"{key}.json"
    if path.exists() and not recalibrate:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # unreadable: measure again
    big = sum(p.numel() for p in model.parameters()) >= BF16_MIN_PARAMS
    n_threads = torch.get_num_threads()
    thread_options = [n_threads] if big or n_threads == 1 else [1, n_threads]
    pixels, ids = _inputs(model)
    measured = []
    log.info("engine auto: measuring %s on %s (once per machine and model)", ", ".join(cands),
             model.config.name or "the model")
    for name in cands:
        # torch's matmuls (MKL) round some small products differently per thread count (~1e-7); exported
        # engines do not (tested), so only they are measured with other thread counts than the process's.
        for threads in ([n_threads] if name == "torch" else thread_options):
            try:
                if name == "torch":  # it casts weights in place: measure a copy when it would
                    m = model if precision is None or resolve_precision(precision, model, model.device) == \
                        precision_of(model) else copy.deepcopy(model)
                    eng = ENGINES.create(name, m, precision=precision, threads=threads)
                else:
                    eng = ENGINES.create(name, model, precision=precision, threads=threads, cache_dir=cache_dir)
            except Exception as e:  # noqa: BLE001 - an engine that cannot run this model is not a candidate
                log.warning("engine auto: %s unavailable for this model (%s)", name, e)
                break
            t_img = _time(lambda: eng.encode_pixels(pixels)) / len(pixels)
            t_txt = _time(lambda: eng.encode_tokens(ids)) / len(ids)
            measured.append({"engine": name, "threads": threads, "precision": eng.precision,
                             "image_s_per_item": t_img, "text_s_per_item": t_txt, "score": t_img + t_txt})
            del eng
    best = min(measured, key=lambda r: r["score"])
    out = {"version": CALIBRATION_VERSION, "choice": {"engine": best["engine"], "threads": best["threads"]},
           "measured": measured, "machine": machine, "model": fp, "precision": precision, "time": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    log.info("engine auto: picked %s with %d thread(s)", best["engine"], best["threads"])
    return out


@ENGINES.register("auto")
class AutoEngine(Engine):
    """The fastest engine measured on this machine for this model (torch on CUDA devices)."""

    options = (Option("device", str, help="cpu, cuda, ... (CUDA devices use the torch engine)"),
               Option("precision", str, help="auto | fp32 | bf16 | fp16 | int8 (candidates: engines offering it)"),
               Option("threads", int, help="intra-op threads (default: measured, 1 or all, for small models)"),
               Option("cache_dir", str, help="where exported graphs and calibrations are kept"),
               Option("recalibrate", bool, default=False, help="measure the engines again"),
               Option("candidates", list, help="engines to measure (default: every installed one)", cli=False))
    precisions = ("auto", "fp32", "bf16", "fp16", "int8")

    def __new__(cls, model, device=None, precision=None, threads=None, cache_dir=None, recalibrate=False,
                candidates=None):
        model = unwrap_model(model)
        dev = pick_device(device) if device is not None else model.device
        if dev.type != "cpu":
            return ENGINES.create("torch", model, device=device, precision=precision)
        if device is not None:
            model = model.to(dev)
        cal = calibrate(model, precision=precision, cache_dir=cache_dir, recalibrate=recalibrate,
                        candidates=candidates)
        choice = cal["choice"]
        opts = {"precision": precision, "threads": threads or choice["threads"]}
        if choice["engine"] != "torch":
            opts["cache_dir"] = cache_dir
        return ENGINES.create(choice["engine"], model, **opts)

    def encode_pixels(self, pixels, normalize=True):  # pragma: no cover - __new__ returns another engine
        raise NotImplementedError

    def encode_tokens(self, token_ids, normalize=True):  # pragma: no cover
        raise NotImplementedError
