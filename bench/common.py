"""The bench/ convention, shared by every script under bench/ (tests/test_bench_convention.py checks it):

- `add_common_args(parser)`: `--seeds` (a list: `0 1 2` or `0,1,2`) and `--json PATH` (the raw results; by
  default the page's path with the suffix .json, beside it). Accuracy benches train / sample once per seed;
  speed benches draw their synthetic inputs from the seed and repeat once per seed.
- `summarize(values, seeds)`: mean, sample standard deviation (ddof=1; None for one seed), n and the seeds;
  `fmt(summary)` quotes it as "mean ± std (seeds 0,1,2)".
- `machine()`: CPU model, the flags that matter (avx2, avx512f, avx512_bf16, amx), cores, torch version and
  threads, and the measured fp32 matmul peak; `machine_line()` the same as one sentence for a page.
- `write_results(page_path, payload)`: the raw JSON (with the machine and the seeds) beside the markdown page,
  same stem, .json, written atomically; `publish(text, out)` prints a page and writes it atomically.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

STD_KIND = "sample standard deviation (ddof=1)"


def parse_seeds(tokens: Sequence[str] | str) -> list[int]:
    """`["0", "1", "2"]`, `["0,1,2"]` or `"0,1,2"` -> [0, 1, 2] (duplicates refused: a seed counted twice would
    shrink the spread)."""
    if isinstance(tokens, str):
        tokens = [tokens]
    seeds = []
    for tok in tokens:
        for part in str(tok).replace(",", " ").split():
            try:
                seeds.append(int(part))
            except ValueError:
                raise argparse.ArgumentTypeError(f"seed {part!r} is not an integer") from None
    if not seeds:
        raise argparse.ArgumentTypeError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds {seeds} repeat a seed")
    return seeds


class _SeedsAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_seeds(values))
        except argparse.ArgumentTypeError as e:
            parser.error(f"{option_string}: {e}")


def add_common_args(parser: argparse.ArgumentParser, *, seeds: Sequence[int] = (0, 1, 2),
                    seeds_help: str = "") -> argparse.ArgumentParser:
    """Add `--seeds` (list, default `seeds`) and `--json PATH` to `parser`."""
    parser.add_argument("--seeds", nargs="+", action=_SeedsAction, default=list(seeds), metavar="SEED",
                        help=(seeds_help or "seeds to run") + f" ('0 1 2' or '0,1,2'; default "
                             f"{','.join(map(str, seeds))}); results are mean ± sample std over them")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="raw results as JSON (default: beside the markdown page, same stem, .json; '-': stdout)")
    return parser


def summarize(values: Sequence[float], seeds: Optional[Sequence[int]] = None) -> dict:
    """{"mean", "std" (sample, ddof=1; None for a single value), "n", "seeds", "values"}; `seeds` (one per
    value) is recorded so every figure carries the seeds it came from."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("summarize: no values")
    if seeds is not None and len(seeds) != len(vals):
        raise ValueError(f"summarize: {len(vals)} values but {len(seeds)} seeds")
    n = len(vals)
    mean = math.fsum(vals) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "std_kind": STD_KIND, "n": n,
            "seeds": list(seeds) if seeds is not None else None, "values": vals}


def summarize_fields(rows: Sequence[dict], seeds: Sequence[int]) -> dict:
    """One dict per seed -> {field: summarize(...)} for every numeric field all rows share (nested dicts: dotted
    names)."""
    def flat(d: dict, pre: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{pre}{k}."))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{pre}{k}"] = v
        return out

    flats = [flat(r) for r in rows]
    keys = [k for k in flats[0] if all(k in f for f in flats[1:])] if flats else []
    return {k: summarize([f[k] for f in flats], seeds) for k in keys}


def fmt(s: dict, digits: int = 3, seeds: bool = True) -> str:
    """"0.644 ± 0.114 (seeds 0,1,2)"; one value: "0.644 (single seed 0)"."""
    sd = "" if s["std"] is None else f" ± {s['std']:.{digits}f}"
    if not seeds or s.get("seeds") is None:
        return f"{s['mean']:.{digits}f}{sd}" + ("" if s["std"] is not None else " (single value)")
    tag = f"seeds {','.join(map(str, s['seeds']))}" if s["n"] > 1 else f"single seed {s['seeds'][0]}"
    return f"{s['mean']:.{digits}f}{sd} ({tag})"


def _matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


@functools.lru_cache(maxsize=1)
def _measured_machine() -> tuple:
    import torch

    from clipforge.encode.auto import machine_fingerprint

    m = machine_fingerprint()
    m["torch"] = torch.__version__
    m["torch_threads"] = torch.get_num_threads()
    m["fp32_matmul_gflops"] = round(_matmul_gflops(), 1)  # torch, 2048^2, best of 5, this process's threads
    return tuple(m.items())


def machine() -> dict:
    """What the numbers depend on: cpu, flags (avx2 / avx512f / avx512_bf16 / amx ...), cores, machine,
    library versions, torch and torch_threads, fp32_matmul_gflops (measured once per process), and the load
    average now (the machine may be shared)."""
    import os

    m = dict(_measured_machine())
    m["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    return m


def machine_line(m: Optional[dict] = None) -> str:
    m = m or machine()
    return (f"{m['cpu'] or m['machine']}, {m['cores']} cores, flags {' '.join(m['flags']) or '-'}, torch "
            f"{m['torch']} ({m['torch_threads']} threads); measured fp32 matmul peak {m['fp32_matmul_gflops']:.0f} "
            f"GFLOP/s; load average {m['load_avg'][0]:.1f}")


def json_path_for(page_path) -> Path:
    """The raw JSON beside a markdown page: same folder, same stem, .json."""
    return Path(page_path).with_suffix(".json")


def write_results(page_path, payload: dict, json_path: Optional[str] = None) -> Optional[Path]:
    """Write `payload` as JSON, atomically, to `json_path` (the `--json` value; '-' prints it) or else beside
    `page_path`; neither given: nothing is written. `payload` must hold the seeds it ran; the machine is
    added when absent. Returns the path written (None when none)."""
    from clipforge.atomic import atomic_write_text

    if "seeds" not in payload:
        raise ValueError("write_results: the payload has no 'seeds'")
    payload = dict(payload)
    payload.setdefault("machine", machine())
    payload.setdefault("argv", sys.argv[1:])
    text = json.dumps(payload, indent=1, default=str) + "\n"
    if json_path == "-":
        print(text, end="")
        return None
    target = Path(json_path) if json_path else json_path_for(page_path) if page_path else None
    if target is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    return target


def publish(text: str, out: Optional[str] = None) -> None:
    """Print a markdown page and write it atomically where `out` says."""
    print(text)
    if out:
        from clipforge.atomic import atomic_write_text

        atomic_write_text(out, text)
