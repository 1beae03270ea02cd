"""`clipforge serve INDEX_DIR`: the HTTP search API and web page (127.0.0.1 by default)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict

from clipforge.cli._common import positive_int

MAX_HEADER_BYTES = 16 * 1024


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
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from clipforge.errors import UsageError
    from clipforge.serve.app import SERVE_ENV, Limits, create_app

    key = args.api_key or os.environ.get("CLIPFORGE_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can query it")
    limits = Limits(max_k=args.max_k, max_body_bytes=int(args.max_body_mb * 2**20))
    if args.reload_interval < 0:
        raise UsageError(f"--reload-interval must be >= 0, got {args.reload_interval}")
    options = dict(index_dir=os.path.abspath(args.index_dir), limits=asdict(limits), device=args.device,
                   rerank=args.rerank, rerank_k=args.rerank_k if args.rerank else None,
                   reload_interval=args.reload_interval or None)
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
    # With httptools the app's BodyLimit refuses them (431) once parsed.
    uvicorn.run(target, host=args.host, port=args.port, log_level="warning", http=args.http,
                h11_max_incomplete_event_size=MAX_HEADER_BYTES, limit_concurrency=args.max_connections,
                timeout_keep_alive=5, server_header=False, **kw)
    return 0
