"""`clipforge train`: contrastive training / fine-tuning from a YAML config."""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("train", help="train or fine-tune a model from a YAML config",
                       description="Train or fine-tune a contrastive model. Works the same under torchrun.")
    p.add_argument("--config", "-c", default=None,
                   help="YAML config file, or the name of a packaged one (demo-digits: the digits demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--out", "-o", required=True, help="run directory (config, metrics, checkpoints, final model)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory to continue from")
    p.add_argument("--overwrite", action="store_true",
                   help="start OUT again from scratch (deleting its old run), or replace a folder that is not a run")
    p.add_argument("--allow-pipe", action="store_true",
                   help="run the shell command of a pipe: data source that the config file names (refused "
                        "otherwise: a command read from a file runs only when you accept it; one given with "
                        "--set is yours; see docs/security.md)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from clipforge.train.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg))
        return 0
    from clipforge.train.loop import train

    summary = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, allow_pipe=args.allow_pipe)
    final = summary.get("final", {})
    keys = [k for k in ("loss", "zeroshot_top1", "zeroshot_top5") if k in final]
    print(f"trained {summary['steps']} steps in {summary['train_time_s']} s -> {args.out}/final  "
          + "  ".join(f"{k}={final[k]:.4f}" for k in keys))
    if summary["skipped"]["total"]:
        print(f"skipped {summary['skipped']['total']} bad samples: {json.dumps(summary['skipped']['by_reason'])}")
    return 0
