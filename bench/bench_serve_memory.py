"""Server memory under a burst: RSS of `clipforge serve` after warm-up, during and after a 64-client burst.

    python bench/bench_serve_memory.py [--seconds 30] [--clients 64] [--out docs/bench_serve_memory.md]

Builds the photos demo index with the tiny model, starts `clipforge serve` on 127.0.0.1 (a free port) with an
API key, warms it up with every kind of request, records its resident memory (VmRSS from /proc), then runs
`--clients` concurrent clients for `--seconds` seconds and records RSS again (sampled every 0.5 s during the
burst, and once more after 5 idle seconds). The burst mixes what could make memory grow: text queries that
are all different (the text-embedding cache fills), image queries (base64 PNGs decoded per request), "more
like this", filters, thumbnails, and hostile requests (bad JSON, oversized filters, unauthenticated). Any
5xx or transport error is counted as an error. Acceptance: 0 errors and RSS after the burst within 20% of
RSS after warm-up. Only loopback addresses are used.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np

from common import add_common_args, fmt, publish, summarize_fields, write_results

KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _png_b64(seed: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _request(i: int, n_items: int, images: list[str]):
    """(method, path, json body or raw bytes, headers, allowed statuses) for the i-th request of the mix."""
    h = {"X-API-Key": KEY}
    r = i % 10
    if r in (0, 1, 2):  # every text different: the text cache fills and evicts
        return "POST", "/search", {"text": f"a photo of thing {i} near place {i * 7 % 1013}", "k": 10}, h, (200,)
    if r == 3:
        return "POST", "/search", {"image": images[i % len(images)], "k": 5}, h, (200,)
    if r == 4:
        return "POST", "/search", {"like": i % n_items, "k": 10, "dedup": 0.99}, h, (200,)
    if r == 5:
        return "POST", "/search", {"text": f"cat {i}", "filters": ["caption*=a", "size>=1"], "k": 5}, h, (200,)
    if r == 6:
        return "GET", f"/thumb/{i % n_items}", None, h, (200,)
    if r == 7:
        return "GET", f"/items/{i % n_items}", None, h, (200,)
    if r == 8:  # hostile: broken JSON, a filter over the cap, an id beyond int64
        kind = (i // 10) % 3
        if kind == 0:
            return "POST", "/search", b"{not json", h, (422,)
        if kind == 1:
            return "POST", "/search", {"text": "x", "filters": ["caption*=" + "a" * 5000]}, h, (422,)
        return "GET", "/items/99999999999999999999", None, h, (422,)
    return "POST", "/search", {"text": "no key"}, {}, (401,)  # unauthenticated


async def _clients(url: str, n_clients: int, seconds: float, n_items: int, images: list[str], start: int,
                   sample=None):
    counts = {"requests": 0, "errors": 0, "unexpected": 0}
    lat: list[float] = []
    first_errors: list[str] = []
    next_i = start
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker():
            nonlocal next_i
            while time.perf_counter() < stop:
                i = next_i
                next_i += 1
                method, path, body, headers, ok = _request(i, n_items, images)
                t = time.perf_counter()
                try:
                    if isinstance(body, bytes):
                        r = await client.request(method, path, content=body,
                                                 headers={**headers, "content-type": "application/json"})
                    else:
                        r = await client.request(method, path, json=body, headers=headers)
                    if r.status_code >= 500:
                        counts["errors"] += 1
                        first_errors.append(f"{r.status_code} {path}: {r.text[:100]}")
                    elif r.status_code not in ok:
                        counts["unexpected"] += 1
                        first_errors.append(f"{r.status_code} {path}: {r.text[:100]}")
                except httpx.HTTPError as e:
                    counts["errors"] += 1
                    first_errors.append(repr(e))
                lat.append(time.perf_counter() - t)
                counts["requests"] += 1

        async def sampler():
            while time.perf_counter() < stop:
                sample()
                await asyncio.sleep(0.5)

        tasks = [worker() for _ in range(n_clients)] + ([sampler()] if sample else [])
        await asyncio.gather(*tasks)
    return counts, np.array(lat), first_errors[:5], next_i


def _load(avg) -> str:
    return " / ".join(f"{x:.1f}" for x in avg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--warmup-seconds", type=float, default=10.0)
    ap.add_argument("--out", default=None, help="write a markdown report here")
    add_common_args(ap, seeds=(0,), seeds_help="one server and burst per seed (the seed draws the query images)")
    args = ap.parse_args(argv)
    runs = [measure(args, seed) for seed in args.seeds]
    summary = summarize_fields([{k: v for k, v in r.items() if k not in ("load_before", "load_after")} for r in runs],
                               args.seeds)
    write_results(args.out, {"bench": "serve_memory", "seeds": args.seeds, "runs": runs, "summary": summary},
                  args.json)
    ok = all(r["ok"] for r in runs)
    if args.out:
        write_page(args, runs[0], summary, ok)
    return 0 if ok else 1


def measure(args, seed: int) -> dict:
    from clipforge.data.demo_sets import build_photos
    from clipforge.retrieval.build import build_index

    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="bench-serve-mem-")
    photos = build_photos(os.path.join(tmp, "photos"))
    idx = os.path.join(tmp, "idx")
    build_index(f"files:{photos['images_dir']}", "tiny", idx, batch_size=16, progress=False)
    n_items = photos["num_photos"]
    images = [_png_b64(16 * seed + s) for s in range(16)]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "clipforge", "serve", idx, "--host", "127.0.0.1",
                             "--port", str(port), "--api-key", KEY], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    samples: list[float] = []
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rss_start = rss_mb(proc.pid)
        warm, _, warm_err, i = asyncio.run(_clients(url, args.clients, args.warmup_seconds, n_items, images, 0))
        time.sleep(2)
        rss_warm = rss_mb(proc.pid)
        burst, lat, burst_err, _ = asyncio.run(_clients(url, args.clients, args.seconds, n_items, images, i,
                                                        sample=lambda: samples.append(rss_mb(proc.pid))))
        rss_burst_end = rss_mb(proc.pid)
        time.sleep(5)
        rss_after = rss_mb(proc.pid)
        alive = httpx.get(url + "/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1].decode(errors="replace")
    load_after = os.getloadavg()
    ms = lat * 1e3
    res = {"clients": args.clients, "seconds": args.seconds, "requests": burst["requests"],
           "errors": burst["errors"] + warm["errors"], "unexpected_status": burst["unexpected"] + warm["unexpected"],
           "qps": burst["requests"] / args.seconds, "p50_ms": float(np.percentile(ms, 50)),
           "p99_ms": float(np.percentile(ms, 99)), "rss_start_mb": rss_start, "rss_warm_mb": rss_warm,
           "rss_peak_mb": max(samples + [rss_burst_end]), "rss_burst_end_mb": rss_burst_end,
           "rss_after_idle_mb": rss_after, "growth_pct": 100 * (rss_after - rss_warm) / rss_warm,
           "alive": alive, "server_tracebacks": err.count("Traceback"),
           "load_before": load_before, "load_after": load_after, "seed": seed}
    print(res)
    if warm_err or burst_err:
        print("first problems:", warm_err + burst_err)
    res["ok"] = res["errors"] == 0 and res["unexpected_status"] == 0 and abs(res["growth_pct"]) <= 20 and alive
    return res


def write_page(args, res: dict, summary: dict, ok: bool) -> None:
    load_before, load_after, alive = res["load_before"], res["load_after"], res["alive"]
    rss_start, rss_warm, rss_burst_end, rss_after = (res[k] for k in ("rss_start_mb", "rss_warm_mb",
                                                                       "rss_burst_end_mb", "rss_after_idle_mb"))
    seeds = ",".join(map(str, args.seeds))
    text = f"""# Server memory under a burst (loopback)

`python bench/bench_serve_memory.py --seconds {args.seconds:g} --clients {args.clients} --seeds {seeds}` on {platform.machine()} with
{os.cpu_count()} CPUs, shared with other jobs while measured (1 / 5 / 15-minute load average {_load(load_before)}
before, {_load(load_after)} after), Python {platform.python_version()}. One
`clipforge serve` process (API key on) over the photos demo index (22 items, tiny model). Warm-up:
{args.warmup_seconds:g} s of the same mix; then {args.clients} clients for {args.seconds:g} s. The mix, per 10
requests: 3 text queries that are all different (the text cache fills), 1 image query (64x64 PNG, base64),
1 "more like this" with dedup, 1 text + filters, 1 thumbnail, 1 item, 1 hostile request (broken JSON, a
5,000-character filter, an id beyond int64: each must be a 422) and 1 unauthenticated search (401).

| clients | seconds | requests | 5xx / transport errors | wrong status | QPS | p50 ms | p99 ms |
|---:|---:|---:|---:|---:|---:|---:|---:|
| {res['clients']} | {res['seconds']:g} | {res['requests']} | {res['errors']} | {res['unexpected_status']} | \
{res['qps']:.0f} | {res['p50_ms']:.1f} | {res['p99_ms']:.1f} |

| RSS (MB) | started | after warm-up | peak in burst | end of burst | after 5 s idle | growth vs warm-up |
|---|---:|---:|---:|---:|---:|---:|
| server | {rss_start:.0f} | {rss_warm:.0f} | {res['rss_peak_mb']:.0f} | {rss_burst_end:.0f} | {rss_after:.0f} | \
{res['growth_pct']:+.1f}% |

Tables: seed {res['seed']}. Over seeds {seeds} (mean ± sample std): QPS {fmt(summary['qps'], 0, False)}, p50
{fmt(summary['p50_ms'], 1, False)} ms, p99 {fmt(summary['p99_ms'], 1, False)} ms, growth
{fmt(summary['growth_pct'], 1, False)}%.

Acceptance (RSS after the burst within 20% of RSS after warm-up, 0 errors), every seed: {"met" if ok else "NOT met"}.
Server alive afterwards: {alive}; tracebacks in its log: {res['server_tracebacks']}.
What bounds memory: request bodies (16 MB) and heads (16 KB) are capped, at most 128 connections are
served at once (`--max-connections`), the text-embedding cache (4,096 entries) and thumbnail cache (4,096)
are LRU-bounded, and the latency window keeps the last 2,000 searches.
"""
    publish(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
