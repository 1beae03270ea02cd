"""What speed-up over fp32 each arithmetic can give on this CPU: the ceiling of any ViT-B/32 engine.

    python bench/bench_matmul_ceiling.py [--threads N] [--repeats 10] [--out docs/bench_matmul_ceiling.md]

A ViT-B/32 image forward is ~96% Linear layers, so no engine can beat open_clip's fp32 eager by more than the
ratio between its GEMM rate and fp32's on the layer shapes the model runs. This measures that ratio on the
MLP's first layer for a batch of 32 images (1600 x 768 @ 768 x 3072) and on the qkv projection (1600 x 768 @
768 x 2304), in every library an engine could use:

- fp32: torch (oneDNN/MKL), ONNX Runtime (MLAS), OpenVINO (oneDNN)
- bf16: torch with bf16 weights (native on avx512_bf16 / AMX, emulated elsewhere)
- int8: ONNX Runtime dynamic (MatMulInteger, u8 x s8), torch dynamic quantisation (fbgemm, oneDNN)

The rate is reported as fp32-equivalent GFLOP/s (2·M·K·N / time) and as a ratio to torch fp32 measured in the
same run (best of `--repeats`, alternating order), with the CPU flags that decide it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from common import add_common_args, fmt, machine, machine_line, publish, summarize, write_results  # noqa: E402

SHAPES = {"mlp.fc": (1600, 768, 3072), "attn.qkv": (1600, 768, 2304)}


def _onnx_matmul(path: str, w: np.ndarray, m: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = w.shape
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def candidates(x: np.ndarray, w: np.ndarray, threads: int, tmp: str) -> dict:
    """label -> zero-argument callable computing x @ w in that library and arithmetic (skipping the missing)."""
    import torch

    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    out = {"torch fp32": lambda: xt @ wt}
    xb, wb = xt.bfloat16(), wt.bfloat16()
    out["torch bf16"] = lambda: xb @ wb
    lin = torch.nn.Linear(w.shape[0], w.shape[1], bias=False)
    with torch.no_grad():
        lin.weight.copy_(wt.T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for engine in ("fbgemm", "onednn"):
            if engine in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = engine
                q = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                           dtype=torch.qint8)
                out[f"torch int8 dynamic ({engine})"] = lambda q=q: q(xt)
    src = os.path.join(tmp, "fp32.onnx")
    _onnx_matmul(src, w, x.shape[0])
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        s32 = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        out["onnxruntime fp32"] = lambda: s32.run(None, {"x": x})
        dst = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
        s8 = ort.InferenceSession(dst, so, providers=["CPUExecutionProvider"])
        out["onnxruntime int8 dynamic"] = lambda: s8.run(None, {"x": x})
    except ImportError:
        pass
    try:
        import openvino as ov

        c = ov.Core().compile_model(src, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": "f32"})
        r = c.create_infer_request()
        out["openvino fp32"] = lambda: r.infer({0: x})
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=10, help="calls per round (the best counts)")
    ap.add_argument("--out", default=None, help="write the markdown page here")
    add_common_args(ap, seeds=(0, 1), seeds_help="one round per seed (its own matrices; the order alternates)")
    a = ap.parse_args(argv)

    import logging

    import torch

    from clipforge.encode.auto import _time as best_time  # warm-up, then the best of `reps` calls

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantiser warns about pre-processing
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    m = machine()
    rounds = {}  # shape -> label -> [GFLOP/s per seed]
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        for shape, (M, K, N) in SHAPES.items():
            rounds[shape] = {}
            for rep, seed in enumerate(a.seeds):  # alternate the order so that a load change hits every library alike
                rng = np.random.default_rng(seed)
                x = rng.standard_normal((M, K)).astype(np.float32)
                w = (rng.standard_normal((K, N)) * K ** -0.5).astype(np.float32)
                sub = os.path.join(tmp, f"{shape}-{seed}")
                os.makedirs(sub)
                fns = candidates(x, w, threads, sub)
                for label in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
                    rounds[shape].setdefault(label, []).append(2 * M * K * N / best_time(fns[label], a.repeats) / 1e9)
            print(shape, {k: [round(x, 1) for x in v] for k, v in rounds[shape].items()}, flush=True)
    stats = {shape: {label: summarize(v, a.seeds) for label, v in r.items()} for shape, r in rounds.items()}
    results = {shape: {label: st["mean"] for label, st in r.items()} for shape, r in stats.items()}
    labels = list(next(iter(results.values())))
    lines = ["| library, arithmetic | " + " | ".join(f"{s} GFLOP/s | vs torch fp32" for s in SHAPES) + " |",
             "|---|" + "---:|---:|" * len(SHAPES)]
    for label in labels:
        cells = []
        for s in SHAPES:
            g = results[s][label]
            cells += [fmt(stats[s][label], 0, False), f"{g / results[s]['torch fp32']:.2f}x"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    best_label = max(labels, key=lambda lab: results["mlp.fc"][lab])
    ceiling = results["mlp.fc"][best_label] / results["mlp.fc"]["torch fp32"]
    head = (f"`python bench/bench_matmul_ceiling.py --repeats {a.repeats} --seeds {','.join(map(str, a.seeds))}` — "
            f"{machine_line(m)}; {threads} threads. GFLOP/s = fp32-equivalent rate (2·M·K·N / time): per round the "
            f"best of {a.repeats} calls, then mean ± sample std over {len(a.seeds)} alternating rounds (one per seed, "
            "each its own matrices).")
    summary = (f"Fastest GEMM on the MLP shape: **{best_label}**, {ceiling:.2f}x torch fp32 (what open_clip eager "
               "runs). A ViT-B/32 forward spends ~96% of its FLOPs in these layers, so on this machine no engine "
               f"can beat an fp32 eager peer that reaches the fp32 peak by much more than {ceiling:.2f}x, plus "
               "the ~6% clipforge saves by computing only the pooled row in the last block.")
    text = "\n".join(["# GEMM ceiling per arithmetic: how fast can a ViT-B/32 engine be here?", "", head, "",
                      *lines, "", summary, ""])
    publish(text, a.out)
    write_results(a.out, {"bench": "matmul_ceiling", "seeds": a.seeds, "repeats": a.repeats, "gflops": stats,
                          "machine": m}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
