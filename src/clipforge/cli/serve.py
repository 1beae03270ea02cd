"""`clipforge serve INDEX_DIR`: the HTTP search API and web page (127.0.0.1 by default)."""
from __future__ import annotations

import os

from clipforge.cli._common import positive_int

MAX_HEADER_BYTES = 16 * 1024


def register(sub):
    p = sub.add_parser("serve", help="serve an index over HTTP with a search page",
                       description="FastAPI service: POST /search, GET /items/{id}, /thumb/{id}, /healthz, "
                                   "/stats, /docs; the web page at /.")
    p.add_argument("index_dir")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require this key in the X-API-Key header (default: $CLIPFORGE_API_KEY, else none)")
    p.add_argument("--max-k", type=positive_int, default=200)
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (default 16)")
    p.add_argument("--max-connections", type=positive_int, default=128,
                   help="concurrent connections before new ones get 503 (bounds memory; default 128)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from clipforge.serve.app import Limits, create_app

    key = args.api_key or os.environ.get("CLIPFORGE_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can query it")
    limits = Limits(max_k=args.max_k, max_body_bytes=int(args.max_body_mb * 2**20))
    app = create_app(args.index_dir, api_key=key, limits=limits, device=args.device)
    print(f"serving {args.index_dir} on http://{args.host}:{args.port}/  (API docs at /docs)")
    # h11 refuses request heads (request line + headers) over 16 KB; say so explicitly rather than rely on it.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http="h11",
                h11_max_incomplete_event_size=MAX_HEADER_BYTES, limit_concurrency=args.max_connections,
                timeout_keep_alive=5, server_header=False)
    return 0
