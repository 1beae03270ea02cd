"""`clipforge interpolate`: WiSE-FT weight-space interpolation between two checkpoints (and a sweep)."""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("interpolate", help="WiSE-FT: interpolate two models' weights",
                       description="theta = (1 - alpha) * A + alpha * B for every tensor. With --alphas and one or "
                                   "more --eval-dataset (typically the fine-tuning target and the data the "
                                   "zero-shot model should keep doing well on), score every alpha zero-shot on "
                                   "each, print a table (and --chart a plot: one line per dataset), and keep the "
                                   "alpha with the best mean top-1.")
    p.add_argument("model_a", help="zero-shot / base model (alpha = 0)")
    p.add_argument("model_b", help="fine-tuned model (alpha = 1)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--alphas", default=None, help="comma-separated alphas to sweep, e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--eval-dataset", dest="eval_datasets", action="append", default=None, metavar="SRC",
                   help="labelled source the sweep scores each alpha on (repeatable: one curve per dataset)")
    p.add_argument("--templates", default=None, help="template set name, file, for the sweep")
    p.add_argument("--chart", default=None, metavar="PNG", help="draw the sweep here: top-1 vs alpha, a line per "
                                                                "dataset")
    p.add_argument("--json", action="store_true", help="print the sweep as JSON lines (alpha, dataset, metrics) "
                                                       "instead of a table")
    p.add_argument("--out", "-o", required=True, help="output checkpoint directory (new, empty or a checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT / CHART even when it holds something else")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.errors import UsageError
    from clipforge.models import load_model
    from clipforge.models.checkpoint import vet_checkpoint_dir
    from clipforge.train.interpolate import interpolate_models, parse_alphas

    if args.alphas and not args.eval_datasets:
        raise UsageError("--alphas needs --eval-dataset to choose the best alpha")
    if not args.alphas and (args.eval_datasets or args.chart):
        raise UsageError("--eval-dataset and --chart belong to a sweep: give --alphas")
    alphas = parse_alphas(args.alphas) if args.alphas else None
    vet_checkpoint_dir(args.out, args.overwrite)  # before the models load and the sweep runs
    if args.chart:
        from clipforge.evaluate.plots import vet_figure

        if not args.chart.lower().endswith(".png"):
            raise UsageError(f"--chart must name a .png file, got {args.chart!r}")
        vet_figure(args.chart, overwrite=args.overwrite, param="chart")
    a, b = load_model(args.model_a), load_model(args.model_b)
    alpha = args.alpha
    if alphas:
        from clipforge.train.wise_sweep import wise_sweep

        res = wise_sweep(a, b, alphas, args.eval_datasets, templates=args.templates, chart=args.chart,
                         overwrite=args.overwrite)
        if args.json:
            for r in res.rows:
                print(json.dumps(r))
        else:
            print(res.table())
        alpha = res.best()
        print(f"best alpha {alpha}" + (f" (highest mean top1 over {len(res.datasets)} datasets)"
                                       if len(res.datasets) > 1 else ""))
        if args.chart:
            print(f"wrote {args.chart}")
    interpolate_models(a, b, alpha).save_pretrained(args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} (alpha={alpha})")
    return 0
