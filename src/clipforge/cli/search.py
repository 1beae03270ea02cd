"""`clipforge search INDEX_DIR "query"`: ranked hits by text, image, or both; optional contact sheet."""
from __future__ import annotations

import json
import logging
import os

from clipforge.cli._common import add_engine_args, add_overwrite_arg, parse_item_ids, positive_int

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines about CPU builds are noise here


def register(sub):
    p = sub.add_parser("search", help="search an index by text and/or image",
                       description='Query language: plain text, or weighted terms such as '
                                   '\'"golden retriever" + 0.5*"beach" - "indoors"\' and img:PATH terms.')
    p.add_argument("index_dir")
    p.add_argument("query", nargs="?", default=None, help="text query (the query language)")
    p.add_argument("--image", default=None, help="query image file (combined with the text when both given)")
    p.add_argument("--image-weight", type=float, default=1.0)
    p.add_argument("--like", default=None, help="an indexed item's id: more like this")
    p.add_argument("-k", type=positive_int, default=20, help="results per page")
    p.add_argument("--offset", type=int, default=0, help="skip this many results (pagination)")
    p.add_argument("--filter", action="append", default=[], metavar="COL OP VALUE",
                   help="metadata filter, e.g. 'caption*=dog', 'path~*/beach/*', 'size>=10000' (repeatable)")
    p.add_argument("--dedup", type=float, default=None, help="collapse hits with cosine above this (e.g. 0.95)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit")
    p.add_argument("--sheet", default=None, help="write a contact-sheet PNG of the hits (a new file, or an "
                   "earlier sheet, which is replaced)")
    add_overwrite_arg(p, "SHEET")
    p.add_argument("--heatmap", type=positive_int, nargs="?", const=10, default=None, metavar="N",
                   help="on the contact sheet, draw where the query matches over the top N hits (default 10; "
                        "needs --sheet; see clipforge explain)")
    p.add_argument("--heatmap-method", default="auto", choices=("auto", "maskclip", "tokens", "gradcam"),
                   help="how --heatmap maps are computed (docs/explain.md)")
    p.add_argument("--rerank", default=None, metavar="MODEL|INDEX",
                   help="re-score the top candidates with a second model (a model reference) or with a second "
                        "index of the same source built with a stronger model")
    p.add_argument("--rerank-k", type=positive_int, default=100, help="candidates the second stage re-scores")
    p.add_argument("--device", default=None)
    add_engine_args(p, default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.data.display import shown
    from clipforge.errors import UsageError
    from clipforge.retrieval.index_searcher import IndexSearcher
    from clipforge.retrieval.search_query import SearchQuery

    if args.query is None and args.image is None and args.like is None:
        raise UsageError("give a query, --image PATH, or --like ID")
    if args.offset < 0:
        raise UsageError(f"--offset must be >= 0, got {args.offset}")
    like = None if args.like is None else parse_item_ids([args.like], "--like")[0]
    if args.heatmap and not args.sheet:
        raise UsageError("--heatmap draws on the contact sheet: give --sheet PATH too")
    if args.sheet:
        from clipforge.output_dirs import OutputFile, png_marked
        from clipforge.retrieval.sheet import SHEET_KIND

        if not os.path.isdir(os.path.dirname(os.path.abspath(args.sheet))):
            raise UsageError(f"--sheet {args.sheet}: folder {os.path.dirname(os.path.abspath(args.sheet))} "
                             "does not exist")
        # refused before the model loads and the search runs
        OutputFile(overwrite=args.overwrite, param="sheet", owned=png_marked(SHEET_KIND)).vet(args.sheet)
    searcher = IndexSearcher(args.index_dir, device=args.device, rerank=args.rerank, rerank_k=args.rerank_k,
                             rerank_options={"device": args.device} if args.rerank and args.device else None,
                             encode_engine=args.engine, threads=args.threads)
    query = SearchQuery(args.query, args.image, k=args.k, offset=args.offset, filters=args.filter,
                        dedup=args.dedup, image_weight=args.image_weight, like=like)
    hits = searcher.search(query)
    if hits and not args.json:  # the columns of the lines below
        print(f"{'rank':>4}  {'id':>8}  {'score':<6}{'  stage' if searcher.reranker is not None else ''}  file  caption")
    for h in hits:
        if args.json:
            print(json.dumps(h.to_dict(), default=str))
        else:
            stage = f"  s{h.stage}" if searcher.reranker is not None else ""
            # one line per hit: control characters in names and captions are escaped, never sent to the terminal
            print(f"{h.rank + 1:>4}  {h.id:>8}  {h.score:.4f}{stage}  "
                  f"{shown(h.metadata.get('path') or h.metadata.get('key'))}  {shown(h.metadata.get('caption') or '')}")
    if not hits and not args.json:
        print("no results")
    if args.sheet:
        from clipforge.retrieval.sheet import contact_sheet

        title = args.query or args.image or f"like {args.like}"
        heat = None
        if args.heatmap:
            from clipforge.encode import Encoder
            from clipforge.explain import heatmaps

            enc = searcher.encoder  # maps need the model's own towers: an exported engine's model, in torch
            enc = enc if enc.engine.name == "torch" else Encoder.from_model(enc.model)
            paths = {h.id: searcher.path_of(h.id) for h in hits[:args.heatmap]}
            heat = heatmaps(enc, {i: p for i, p in paths.items() if p}, searcher.query_vector(query),
                            method=args.heatmap_method)
        contact_sheet(hits, args.sheet, title=f"{title}  ({args.index_dir})", overwrite=args.overwrite,
                      heatmaps=heat)
        if not args.json:
            print(f"contact sheet: {shown(args.sheet)}")
    return 0
