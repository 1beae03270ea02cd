"""`clipforge interpolate`: WiSE-FT weight-space interpolation between two checkpoints (and a sweep)."""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("interpolate", help="WiSE-FT: interpolate two models' weights",
                       description="theta = (1 - alpha) * A + alpha * B for every tensor. With --alphas and "
                                   "--eval-dataset, evaluate several alphas zero-shot and keep the best.")
    p.add_argument("model_a", help="zero-shot / base model (alpha = 0)")
    p.add_argument("model_b", help="fine-tuned model (alpha = 1)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--alphas", default=None, help="comma-separated alphas to sweep, e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--eval-dataset", default=None, help="labelled source for the sweep's zero-shot accuracy")
    p.add_argument("--templates", default=None, help="template set name, file, for the sweep")
    p.add_argument("--out", "-o", required=True, help="output checkpoint directory (new, empty or a checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT even when it holds something else")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.errors import UsageError
    from clipforge.models import load_model
    from clipforge.models.checkpoint import vet_checkpoint_dir
    from clipforge.train.interpolate import interpolate_models, parse_alphas, sweep

    vet_checkpoint_dir(args.out, args.overwrite)  # before the models load and the sweep runs
    a, b = load_model(args.model_a), load_model(args.model_b)
    alpha = args.alpha
    if args.alphas:
        if not args.eval_dataset:
            raise UsageError("--alphas needs --eval-dataset to choose the best alpha")
        from clipforge.evaluate.zeroshot_classification import evaluate_zeroshot_classification

        def evaluate(m):
            return evaluate_zeroshot_classification(m, args.eval_dataset, templates=args.templates,
                                                    progress=False)["metrics"]

        rows = sweep(a, b, parse_alphas(args.alphas), evaluate)
        for r in rows:
            print(json.dumps(r))
        alpha = max(rows, key=lambda r: r["top1"])["alpha"]
        print(f"best alpha {alpha}")
    interpolate_models(a, b, alpha).save_pretrained(args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} (alpha={alpha})")
    return 0
