"""Loopback load test of `clipforge serve` with `wrk` (Debian package): queries/s, latency, errors, and the CPU
cost of the server and of the load generator on the same machine.

    python bench/bench_serve_load.py [--seconds 20] [--connections 32] [--workers 1] [--out docs/bench_serve.md]

Builds the photos demo index with the tiny model (or takes --index), starts `clipforge serve` on 127.0.0.1 (a
free port) in a subprocess, and runs two query sets through POST /search, one after the other:

  repeat  10,000 text queries drawn from a realistic set with repeats: 400 distinct queries (object x
          modifier phrases, as people type them) drawn with Zipf-like popularity, so the popular ones repeat
          and the tail is seen a few times — what the text-embedding cache is for.
  unique  10,000 distinct text queries: every one a cache miss, embedded by the model (micro-batched with
          whatever else is waiting).

wrk replays each set's 10,000 bodies in order (each thread from its own offset) for --seconds with
--connections connections kept alive (2 threads), so a run at >= 500 queries/s sends >= 10,000 of them.
Reported: completed requests, queries/s, errors (non-2xx, connect/read/write errors, timeouts), latency
p50/p90/p99/max (wrk's own histogram), and the CPU seconds the server process(es) and wrk used during the run
(from /proc and wait4), per 1,000 requests. `uptime`'s load average before each run says how busy the
machine was. Only loopback addresses are used.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import add_common_args, fmt, summarize_fields, write_results

LUA = r"""
local bodies, n, nthreads, i = {}, 0, 1, 0
local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  n = #bodies
  nthreads = tonumber(args[2])
  i = math.floor((id - 1) * n / nthreads)
end
function request()
  i = i + 1
  return wrk.format("POST", "/search", {["Content-Type"] = "application/json"}, bodies[(i - 1) % n + 1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

OBJECTS = ["cat", "dog", "rocket", "cup of coffee", "horse", "astronaut", "moon", "clock", "coins", "brick wall",
           "motorcycle", "camera", "galaxy", "grass", "gravel", "checkerboard", "color wheel", "red car",
           "bicycle", "beach", "mountain", "city street", "kitten", "bird", "flower"]
MODIFIERS = ["", "a photo of a ", "a close-up of a ", "a black and white picture of a ", "a blurry photo of a ",
             "an old ", "a small ", "a drawing of a ", "the ", "two ", "a picture of my ", "a bright ",
             "a dark photo of a ", "a cartoon "]
SUFFIXES = ["", " at night", " in the snow", " on a table", " outdoors", " indoors"]


def realistic_pool(n_distinct: int = 400, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    pool: list[str] = []
    seen = set()
    while len(pool) < n_distinct:
        q = (MODIFIERS[rng.integers(len(MODIFIERS))] + OBJECTS[rng.integers(len(OBJECTS))] +
             SUFFIXES[rng.integers(len(SUFFIXES))]).strip()
        if q not in seen:
            seen.add(q)
            pool.append(q)
    return pool


def query_sets(n: int = 10_000, seed: int = 0) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    pool = realistic_pool(seed=seed)
    w = 1.0 / np.arange(1, len(pool) + 1) ** 1.1  # Zipf-like: the head repeats, the tail is rare
    repeat = [pool[i] for i in rng.choice(len(pool), size=n, p=w / w.sum())]
    unique = [f"{pool[i % len(pool)]} number {i}" for i in range(n)]  # every text different
    return {"repeat": repeat, "unique": unique}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except OSError:
            pass
    return total


def _server_pids(root: int) -> list[int]:
    """The server process and its children (uvicorn --workers)."""
    out = [root]
    try:
        kids = subprocess.run(["pgrep", "-P", str(root)], capture_output=True, text=True).stdout.split()
        out += [int(k) for k in kids]
    except OSError:
        pass
    return out


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def run_wrk(url: str, bodies_file: str, seconds: int, connections: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA)
        script = f.name
    cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s", "-s", script, url,
           "--", bodies_file, "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read()
    os.unlink(script)
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out}\n{proc.stderr.read()}")
    res = json.loads(line[4:])
    res["wrk_cpu_s"] = usage.ru_utime + usage.ru_stime
    return res


def measure(url: str, pids: list[int], bodies: list[str], seconds: int, connections: int, tmp: str) -> dict:
    path = os.path.join(tmp, "bodies.txt")
    with open(path, "w") as f:
        for q in bodies:
            f.write(json.dumps({"text": q, "k": 10}) + "\n")
    load = _load()
    cpu0 = _cpu_s(pids)
    r = run_wrk(url, path, seconds, connections)
    server_cpu = _cpu_s(pids) - cpu0
    wall = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"requests": r["requests"], "qps": r["requests"] / wall, "errors": errors, "wall_s": wall,
            "p50_ms": r["p50_us"] / 1e3, "p90_ms": r["p90_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "max_ms": r["max_us"] / 1e3, "server_cpu_s": server_cpu, "wrk_cpu_s": r["wrk_cpu_s"],
            "server_cpu_ms_per_req": 1e3 * server_cpu / max(1, r["requests"]),
            "wrk_cpu_ms_per_req": 1e3 * r["wrk_cpu_s"] / max(1, r["requests"]), "load_before": load}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20, help="wrk duration per query set")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="server worker processes (clipforge serve --workers)")
    ap.add_argument("--http", default="h11", choices=["h11", "httptools"], help="clipforge serve --http")
    ap.add_argument("--sets", default="repeat,unique")
    ap.add_argument("--index", default=None, help="an existing index directory (default: build the photos demo)")
    ap.add_argument("--out", default=None, help="append a markdown section here")
    add_common_args(ap, seeds=(0,), seeds_help="one run of every query set per seed (the seed draws the queries)")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)")
        return 2

    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    idx = args.index
    if idx is None:
        from clipforge.data.demo_sets import build_photos
        from clipforge.retrieval.build import build_index

        photos = build_photos(os.path.join(tmp, "photos"))
        idx = os.path.join(tmp, "idx")
        build_index(f"files:{photos['images_dir']}", "tiny", idx, batch_size=16, progress=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "clipforge", "serve", idx, "--host", "127.0.0.1", "--port", str(port)]
    if args.workers > 1:
        cmd += ["--workers", str(args.workers)]
    cmd += ["--http", args.http]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results, per_seed = {}, {}
    try:
        import httpx

        deadline = time.time() + 600  # a busy machine imports torch slowly
        up = 0
        while time.time() < deadline and up < args.workers:  # a few answers in a row: every worker up
            try:
                up = up + 1 if httpx.get(url + "/healthz", timeout=2).status_code == 200 else 0
            except httpx.HTTPError:
                up = 0
            time.sleep(0.5)
        if up < args.workers:
            raise RuntimeError(f"the server did not answer within 600 s: {proc.stderr.read1(2000)!r}")
        time.sleep(5.0 if args.workers > 1 else 0)  # the other workers finish loading
        pids = _server_pids(proc.pid)
        for seed in args.seeds:
            sets = query_sets(seed=seed)
            for name in args.sets.split(","):
                # warm-up: 2 s of other texts (not counted), so the first batch and thread pool are not measured
                measure(url, pids, [f"warm up {seed} {i}" for i in range(2000)], 2, args.connections, tmp)
                r = per_seed.setdefault(name, {})[seed] = measure(url, pids, sets[name], args.seconds,
                                                                    args.connections, tmp)
                print(name, seed, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
        results = {name: summarize_fields([rs[s] for s in args.seeds], args.seeds) for name, rs in per_seed.items()}
        stats = httpx.get(url + "/stats").json()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    out_json = (Path(args.out).with_name(Path(args.out).stem + "_last.json") if args.out else None)
    write_results(None, {"bench": "serve_load", "seeds": args.seeds, "per_seed": per_seed, "summary": results},
                  args.json or out_json)  # the page collects sections; the JSON is the latest run's
    if args.out:
        def f_(r, k, d):
            return fmt(r[k], d, False)
        rows = "\n".join(
            f"| {name} | {f_(r, 'requests', 0)} | {f_(r, 'errors', 0)} | **{f_(r, 'qps', 0)}** | {f_(r, 'p50_ms', 1)} | "
            f"{f_(r, 'p90_ms', 1)} | {f_(r, 'p99_ms', 1)} | {f_(r, 'max_ms', 0)} | {f_(r, 'server_cpu_ms_per_req', 2)} | "
            f"{f_(r, 'wrk_cpu_ms_per_req', 2)} | {f_(r, 'load_before', 1)} |" for name, r in results.items())
        tc = stats.get("text_cache", {})
        text = f"""
### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {args.workers} server process(es), --http {args.http}, {args.connections} connections, {args.seconds} s per set

`python bench/bench_serve_load.py --seconds {args.seconds} --connections {args.connections} --workers {args.workers} --http {args.http} --seeds {','.join(map(str, args.seeds))}`
on {platform.machine()} with {os.cpu_count()} CPUs shared by the server, wrk and other jobs, Python
{platform.python_version()}; photos demo index (22 items, tiny model, exact index), k = 10. Load generator:
wrk (2 threads, Lua script replaying the query set). CPU columns: CPU time per request of the server
process(es) and of wrk, measured over the run. Load: the 1-minute load average just before the run. Each cell:
mean ± sample std over the seeds (each seed its own draw of the query set).

| query set | requests | errors | queries/s | p50 ms | p90 ms | p99 ms | max ms | server CPU ms/req | wrk CPU ms/req | load |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{rows}

Server text cache at the end (last worker answering /stats): {json.dumps(tc)}.
"""
        with open(args.out, "a") as f:
            f.write(text)
    return 1 if any(r["errors"]["mean"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
