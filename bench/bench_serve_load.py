"""Loopback load test of `clipforge serve`: N requests at C concurrent (httpx async), p50/p99 latency, QPS.

    python bench/bench_serve_load.py [--requests 10000] [--concurrency 32] [--out docs/bench_serve.md]

Builds the photos demo index with the tiny model, starts uvicorn on 127.0.0.1 (a free port) in a
subprocess, and sends a mix of POST /search requests: text queries from a pool of 200 distinct strings
(each embedded once, then served from the text cache), "more like this" by id, and text + filter queries.
Reports errors (any non-200), latency percentiles and throughput. Only loopback addresses are used.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bodies(n: int, n_items: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = ["cat", "rocket", "coffee", "moon", "grass", "clock", "coins", "horse", "brick", "galaxies"]
    pool = [f"a photo of a {words[i % 10]} number {i}" for i in range(200)]
    out = []
    for i in range(n):
        r = i % 4
        if r in (0, 1):
            out.append({"text": pool[int(rng.integers(len(pool)))], "k": 10})
        elif r == 2:
            out.append({"like": int(rng.integers(n_items)), "k": 10})
        else:
            out.append({"text": pool[int(rng.integers(len(pool)))], "k": 5, "filters": ["caption*=a"]})
    return out


async def _run(url: str, bodies: list[dict], concurrency: int):
    lat = np.zeros(len(bodies))
    errors: list[str] = []
    queue = iter(enumerate(bodies))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker():
            for i, body in queue:
                t = time.perf_counter()
                try:
                    r = await client.post("/search", json=body)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:100]}")
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                lat[i] = time.perf_counter() - t

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return lat, errors, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", default=None, help="write a markdown report here")
    args = ap.parse_args(argv)

    from clipforge.data.demo_sets import build_photos
    from clipforge.retrieval.build import build_index

    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    photos = build_photos(os.path.join(tmp, "photos"))
    idx = os.path.join(tmp, "idx")
    build_index(f"files:{photos['images_dir']}", "tiny", idx, batch_size=16, progress=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "clipforge", "serve", idx, "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        bodies = _bodies(args.requests, photos["num_photos"])
        asyncio.run(_run(url, bodies[:200], args.concurrency))  # warm-up (not counted)
        lat, errors, wall = asyncio.run(_run(url, bodies, args.concurrency))
        stats = httpx.get(url + "/stats").json()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    ms = lat * 1e3
    res = {"requests": len(bodies), "concurrency": args.concurrency, "errors": len(errors),
           "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
           "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "qps": len(bodies) / wall,
           "wall_s": wall, "server_search_p50_ms": stats["search_ms_p50"]}
    print(res)
    if errors:
        print("first errors:", errors[:5])
    if args.out:
        text = f"""# Serving load test (loopback)

`python bench/bench_serve_load.py --requests {args.requests} --concurrency {args.concurrency}` on
{platform.machine()} with {os.cpu_count()} CPUs (shared with other jobs while measured), Python
{platform.python_version()}. One uvicorn worker process serving the photos demo index (22 items, tiny model,
exact index). Request mix: 50% text queries from a pool of 200 distinct strings (each embedded once, then
answered from the text-embedding cache), 25% "more like this" by id, 25% text + a caption filter; k = 5-10.
Client: httpx async, {args.concurrency} connections kept alive.

| requests | concurrency | errors | p50 ms | p90 ms | p99 ms | max ms | QPS |
|---:|---:|---:|---:|---:|---:|---:|---:|
| {res['requests']} | {res['concurrency']} | {res['errors']} | {res['p50_ms']:.1f} | {res['p90_ms']:.1f} | \
{res['p99_ms']:.1f} | {res['max_ms']:.1f} | {res['qps']:.0f} |

Server-side time per search (decode + embed + search, p50 over the last 2,000): {res['server_search_p50_ms']:.2f} ms;
the rest of the latency is queueing behind {args.concurrency} concurrent requests, HTTP and JSON.
clip-retrieval's Flask back end is reported at ~20 QPS. Uncached text queries pay one text-tower forward
(tiny: ~1-2 ms; ViT-B/32's text tower: tens of ms on CPU), serialised by the model lock.
"""
        with open(args.out, "w") as f:
            f.write(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
