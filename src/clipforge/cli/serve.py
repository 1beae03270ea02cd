"""`clipforge serve INDEX_DIR`: the HTTP search API and web page (127.0.0.1 by default)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

from clipforge.cli._common import add_engine_args, add_token_merge_args, positive_int, token_merge_options

MAX_HEADER_BYTES = 16 * 1024


def _seconds(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return v


def _count_or_zero(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {v}")
    return v


def register(sub):
    p = sub.add_parser("serve", help="serve an index over HTTP with a search page",
                       description="FastAPI service: POST /search, POST /classify, GET|DELETE /items/{id}, "
                                   "/thumb/{id}, /healthz, /stats, /docs; the web page (search and classify) at "
                                   "/. The server picks up `index update` and `index delete` without a restart.")
    p.add_argument("index_dir")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require this key in the X-API-Key header (default: $CLIPFORGE_API_KEY, else none)")
    p.add_argument("--max-k", type=positive_int, default=200)
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (default 16)")
    p.add_argument("--max-connections", type=positive_int, default=128,
                   help="concurrent connections before new ones get 503 (bounds memory; default 128)")
    p.add_argument("--max-connections-per-ip", type=_count_or_zero, default=None, metavar="N",
                   help="open connections one client address may hold, so one client cannot hold them all; "
                        "past it a new connection takes the place of that address's longest-stalled one, or "
                        "gets 503 (default 16; 0, no limit, when bound to loopback, where every client and a "
                        "reverse proxy share one address; stalled connections give way at --max-connections "
                        "either way)")
    p.add_argument("--head-timeout", type=_seconds, default=10.0, metavar="S",
                   help="a request head (request line and headers) must arrive within S seconds, else 408 "
                        "(default 10)")
    p.add_argument("--body-timeout", type=_seconds, default=10.0, metavar="S",
                   help="a request body that stops arriving for S seconds gets 408 (default 10)")
    p.add_argument("--max-concurrent-decodes", type=positive_int, default=2, metavar="N",
                   help="query images decoded at once (each may hold hundreds of MB); a request finding all "
                        "N busy gets 503 with Retry-After (default 2)")
    p.add_argument("--allowed-hosts", default=None, metavar="HOST[,HOST...]",
                   help="Host header names the server answers to (others get 400: stops DNS rebinding); "
                        "any port; *.example.org for subdomains; '*' for any. Default: localhost, 127.0.0.1 "
                        "and ::1 when bound to loopback, any otherwise")
    p.add_argument("--rerank", default=None, metavar="MODEL|INDEX",
                   help="second stage: re-score the top candidates with another model (a model reference) or "
                        "with a second index of the same source built with a stronger model")
    p.add_argument("--rerank-k", type=positive_int, default=100, help="candidates the second stage re-scores")
    p.add_argument("--reload-interval", type=float, default=0.25,
                   help="seconds between checks of the index folder for updates and deletes (0: never)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="server processes, each with its own copy of the index and model (default 1: one "
                        "process answers from its cache without the GIL contention of threads; more use more "
                        "cores: see docs/bench_serve.md)")
    p.add_argument("--http", choices=["h11", "httptools"], default="h11",
                   help="HTTP parser: h11 (default; refuses request heads over 16 KB while reading them) or "
                        "httptools (pip install httptools: about half the server's CPU per request, see "
                        "docs/bench_serve.md; heads over 16 KB get 431 from the app once read)")
    p.add_argument("--device", default=None)
    add_engine_args(p, default=None)
    add_token_merge_args(p, default="0 exact; default: as the index was built (image queries and /classify "
                                    "then embed like the collection)")
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from clipforge.errors import UsageError
    from clipforge.serve.app import SERVE_ENV, Limits, create_app
    from clipforge.serve.hosts import allowed_host_names, default_allowed_hosts, is_loopback
    from clipforge.serve.transport import GuardedProtocol

    key = args.api_key or os.environ.get("CLIPFORGE_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can query it")
    per_ip = args.max_connections_per_ip
    if per_ip is None:
        per_ip = 0 if is_loopback(args.host) else Limits.max_connections_per_ip
    limits = Limits(max_k=args.max_k, max_body_bytes=int(args.max_body_mb * 2**20),
                    head_timeout_s=args.head_timeout, body_timeout_s=args.body_timeout,
                    max_connections_per_ip=per_ip,
                    max_concurrent_decodes=args.max_concurrent_decodes)
    if args.reload_interval < 0:
        raise UsageError(f"--reload-interval must be >= 0, got {args.reload_interval}")
    if args.allowed_hosts is None:
        allowed_hosts = default_allowed_hosts(args.host)
    else:
        allowed_hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
        if not allowed_hosts:
            raise UsageError("--allowed-hosts needs at least one host name ('*' for any)")
        allowed_hosts = None if "*" in allowed_hosts else allowed_host_names(allowed_hosts)  # checked now
    options = dict(index_dir=os.path.abspath(args.index_dir), limits=asdict(limits), device=args.device,
                   rerank=args.rerank, rerank_k=args.rerank_k if args.rerank else None,
                   reload_interval=args.reload_interval or None,
                   encode_engine=args.engine, threads=args.threads, **token_merge_options(args),
                   allowed_hosts=list(allowed_hosts) if allowed_hosts else None)
    if args.workers > 1:  # each worker process builds its app from the environment (uvicorn imports it anew)
        os.environ[SERVE_ENV] = json.dumps(options)
        if key:
            os.environ["CLIPFORGE_API_KEY"] = key
        target, kw = "clipforge.serve.app:app_from_env", {"factory": True, "workers": args.workers}
    else:
        target, kw = create_app(api_key=key, **{**options, "limits": limits}), {}
    print(f"serving {args.index_dir} on http://{args.host}:{args.port}/  (API docs at /docs)"
          + (f", {args.workers} worker processes" if args.workers > 1 else ""))
    if args.http == "httptools":
        try:
            import httptools  # noqa: F401
        except ImportError:
            raise UsageError("--http httptools needs the httptools package (pip install httptools)") from None
    # h11 refuses request heads (request line + headers) over 16 KB; say so explicitly rather than rely on it.
    # With httptools the app's BodyLimit refuses them (431) once parsed. Either parser runs under the transport
    # guard: head and body read timeouts, and the per-address connection limit.
    http = GuardedProtocol.from_limits(limits, args.http)
    uvicorn.run(target, host=args.host, port=args.port, log_level="warning", http=http,
                h11_max_incomplete_event_size=MAX_HEADER_BYTES, limit_concurrency=args.max_connections,
                timeout_keep_alive=5, server_header=False, **kw)
    return 0
