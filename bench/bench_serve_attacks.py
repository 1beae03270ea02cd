"""The server under slow and heavy clients (issue 33): the attacks, measured against `clipforge serve`.

    python bench/bench_serve_attacks.py INDEX_DIR [--seconds 60] [--slow 140] [--interval 10] [-- SERVE_ARGS...]

Starts `clipforge serve INDEX_DIR` on 127.0.0.1 (a free port, any SERVE_ARGS added) and runs, one after another:

  slowloris   `--slow` connections from 127.0.0.1 that each send a request line, then one header line every
              `--interval` s, never finishing the head (a closed one is reopened at once, as an attacker does),
              for `--seconds` s, while a second client (`--probe-source`, 127.0.0.2; 127.0.0.1 is the
              attacker's own address) asks GET /healthz every 0.5 s: the share
              of its answers that were 200, their worst latency, and how long attack connections lived.
  slow body   a POST /search that declares `Content-Length: 10000000` and sends 1 byte: seconds until the
              server answers or closes (capped at 60).
  HTTP/0.9    `GET /` with no version: seconds until the server answers or closes (capped at 60).
  PNG bombs   `--bombs` (6) concurrent POST /search, each a 77 KB 16-bit 6300 x 6300 PNG: the server's resident memory
              before and its peak during (VmRSS sampled every 20 ms), and the statuses.

Prints one line per measurement. Only loopback addresses are used.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]
from bench_serve_memory import _free_port, rss_mb  # noqa: E402
from common import add_common_args, summarize_fields, write_results  # noqa: E402
from hostile_images import png_stream  # noqa: E402


def get(port: int, path: str = "/healthz", source: str = "127.0.0.2", timeout: float = 10.0):
    """(status or an error name, seconds) of one GET from `source`."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else "closed"
    except OSError as e:
        status = type(e).__name__
    return status, time.monotonic() - t0


def held_for(port: int, payload: bytes, cap: float = 60.0) -> tuple[float, bytes]:
    """Seconds until the server answers or closes after `payload`, and the first bytes it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=cap) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        try:
            first = s.recv(200)
        except (socket.timeout, OSError):
            first = b""
        return time.monotonic() - t0, first


def slowloris(port: int, n: int, interval: float, seconds: float, probe_source: str) -> dict:
    stop = time.monotonic() + seconds
    lives: list[float] = []
    lock = threading.Lock()

    def attacker(i):
        while time.monotonic() < stop:
            t0 = time.monotonic()
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.1", 0))
            except OSError:
                time.sleep(0.2)
                continue
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                k = 0
                while time.monotonic() < stop:
                    time.sleep(interval)
                    s.sendall(f"X-Slow-{k}: {i}\r\n".encode())
                    k += 1
            except OSError:
                with lock:
                    lives.append(time.monotonic() - t0)
            finally:
                s.close()

    threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(min(2.0, seconds / 4))  # the attack in place
    probes = []
    while time.monotonic() < stop:
        probes.append(get(port, source=probe_source))
        time.sleep(0.5)
    for t in threads:
        t.join(timeout=interval + 10)
    statuses = Counter(str(s) for s, _ in probes)
    ok = [dt for s, dt in probes if s == 200]
    return {"probes": len(probes), "ok_share": round(len(ok) / max(1, len(probes)), 3),
            "statuses": dict(statuses), "worst_probe_s": round(max((dt for _, dt in probes), default=0), 3),
            "attack_connections_closed_by_server": len(lives),
            "median_attack_connection_life_s": round(sorted(lives)[len(lives) // 2], 1) if lives else None}


def png_bombs(port: int, pid: int, n: int = 6) -> dict:
    png = png_stream(6300, 6300, 16, 0)
    body = json.dumps({"image": base64.b64encode(png).decode(), "k": 5}).encode()
    before = rss_mb(pid)
    peak, results = before, []
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(pid))
            time.sleep(0.02)

    def post():
        head = (f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
                s.sendall(head + body)
                data = s.recv(200)
            results.append(int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else "closed")
        except OSError as e:
            results.append(type(e).__name__)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    posts = [threading.Thread(target=post) for _ in range(n)]
    for t in posts:
        t.start()
    for t in posts:
        t.join()
    time.sleep(0.5)
    done.set()
    sampler.join()
    return {"png_kb": round(len(png) / 1024), "rss_before_mb": round(before), "rss_peak_mb": round(peak),
            "statuses": dict(Counter(str(r) for r in results))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("index_dir")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--slow", type=int, default=140)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--probe-source", default="127.0.0.2",
                    help="the /healthz client's address (127.0.0.1: the attacker's own)")
    ap.add_argument("--bombs", type=int, default=6, help="concurrent PNG-bomb requests (default 6)")
    ap.add_argument("--skip", default="", help="comma-separated: slowloris,body,http09,png")
    add_common_args(ap, seeds=(0,), seeds_help="one round of every attack per seed (the attacks are fixed: the seed only counts the repeat)")
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.serve_args = argv[cut + 1:]  # after --: options for clipforge serve
    skip = set(filter(None, args.skip.split(",")))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "clipforge", "serve", args.index_dir, "--port", str(port),
                             "--reload-interval", "0", *args.serve_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 300
        while get(port, source="127.0.0.1", timeout=1)[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start: " + proc.stderr.read().decode()[-2000:])
            time.sleep(0.2)
        print("serve args:", " ".join(args.serve_args) or "(defaults)")
        rounds = [attack_round(args, port, proc, skip, seed) for seed in args.seeds]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    write_results(None, {"bench": "serve_attacks", "seeds": args.seeds, "serve_args": args.serve_args,
                         "rounds": rounds, "summary": summarize_fields(rounds, args.seeds)}, args.json)
    return 0


def attack_round(args, port: int, proc, skip: set, seed: int) -> dict:
    out = {"seed": seed}
    if "slowloris" not in skip:
        out["slowloris"] = slowloris(port, args.slow, args.interval, args.seconds, args.probe_source)
        print("slowloris:", json.dumps(out["slowloris"]))
    if "body" not in skip:
        s, first = held_for(port, f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                                  "application/json\r\nContent-Length: 10000000\r\n\r\n{".encode())
        out["slow_body_held_s"] = s
        print(f"slow body: held {s:.1f} s, answer {first[:40]!r}")
    if "http09" not in skip:
        s, first = held_for(port, b"GET /\r\n")
        out["http09_held_s"] = s
        print(f"HTTP/0.9: held {s:.1f} s, answer {first[:40]!r}")
    if "png" not in skip:
        out["png_bombs"] = png_bombs(port, proc.pid, args.bombs)
        print(f"PNG bombs x{args.bombs}:", json.dumps(out["png_bombs"]))
    return out


if __name__ == "__main__":
    sys.exit(main())
