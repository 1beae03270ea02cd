"""`clipforge adapt`: work with LoRA / Comp-LoRA adapters (train them with `clipforge train` and an `adapt:` section).

    clipforge adapt info ADAPTER_DIR
    clipforge adapt merge BASE+ADAPTER_DIR --out merged          (or just ADAPTER_DIR: its own base)
    clipforge adapt export BASE+ADAPTER_DIR --to peft --out peft_dir [--base-out hf_dir]
"""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("adapt", help="inspect, merge and export LoRA / Comp-LoRA adapters",
                       description="Adapters are trained with `clipforge train` (an `adapt:` section in the config) "
                                   "and saved apart from their base. Any --model takes BASE+ADAPTER_DIR, or the "
                                   "adapter directory alone (its config names the base and its content hash).")
    s = p.add_subparsers(dest="adapt_command", metavar="SUBCOMMAND")

    i = s.add_parser("info", help="print an adapter's config (method, rank, targets, base, parameters)")
    i.add_argument("adapter", help="adapter directory")
    i.set_defaults(func=run_info)

    m = s.add_parser("merge", help="fold an adapter into its base's weights -> a plain checkpoint directory")
    m.add_argument("model", help="BASE+ADAPTER_DIR, or ADAPTER_DIR (onto the base it names)")
    m.add_argument("--out", required=True, help="checkpoint directory to write: new, empty or an earlier checkpoint "
                                                "(replaced atomically)")
    m.add_argument("--overwrite", action="store_true", help="replace OUT even when it holds something else")
    m.set_defaults(func=run_merge)

    e = s.add_parser("export", help="write an adapter in peft's format for the HF export of its base")
    e.add_argument("model", help="BASE+ADAPTER_DIR, or ADAPTER_DIR")
    e.add_argument("--to", required=True, choices=["peft"], help="target format")
    e.add_argument("--out", required=True, help="adapter directory to write (adapter_config.json + "
                                                 "adapter_model.safetensors)")
    e.add_argument("--overwrite", action="store_true", help="replace OUT / BASE_OUT even when they hold something "
                                                             "else")
    e.add_argument("--base-out", help="also write the base as an HF directory here (`export --to hf`), which "
                                      "PeftModel.from_pretrained(CLIPModel.from_pretrained(BASE_OUT), OUT) loads")
    e.set_defaults(func=run_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_info(args) -> int:
    from clipforge.errors import UsageError
    from clipforge.models.adapter import read_adapter_config

    meta = read_adapter_config(args.adapter)
    if meta is None:
        raise UsageError(f"{args.adapter} is not a clipforge adapter directory")
    print(json.dumps(meta, indent=1))
    return 0


def _load_adapted(ref):
    from clipforge.errors import UsageError
    from clipforge.models import has_lora, load_model

    model = load_model(ref)
    if not has_lora(model):
        raise UsageError(f"{ref} carries no adapter: give BASE+ADAPTER_DIR or an adapter directory")
    return model


def run_merge(args) -> int:
    from clipforge.models.adapter import merged_model
    from clipforge.models.checkpoint import vet_checkpoint_dir

    vet_checkpoint_dir(args.out, args.overwrite)
    out = merged_model(_load_adapted(args.model)).save_pretrained(args.out, overwrite=args.overwrite)
    print(f"wrote merged model to {out}")
    return 0


def run_export(args) -> int:
    from clipforge.models.convert.export import export_hf_base
    from clipforge.models.convert.peft_export import export_peft

    model = _load_adapted(args.model)
    base_ref = getattr(model, "adapter_base", None)
    if args.base_out:  # first: a base transformers cannot hold stops the export before anything is written
        print(f"wrote HF base model to {export_hf_base(model, args.base_out, overwrite=args.overwrite)}")
    out = export_peft(model, args.out, base_model_name_or_path=args.base_out or base_ref, overwrite=args.overwrite)
    print(f"wrote peft adapter to {out}")
    return 0
