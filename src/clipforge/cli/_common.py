"""Argument helpers shared by subcommands (not a subcommand itself)."""
from __future__ import annotations

import argparse

from clipforge.errors import UsageError


def add_model_args(p: argparse.ArgumentParser, default: str = None) -> None:
    p.add_argument("--model", "-m", default=default, required=default is None,
                   help="registered name, checkpoint dir, hf:ORG/NAME, open_clip:ARCH/TAG, or local HF dir")
    p.add_argument("--weights", default=None, help="weights file (.safetensors) for a registered architecture")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled .pt/.bin weights")
    p.add_argument("--heads", default=None, metavar="VISION,TEXT",
                   help="attention heads of an OpenAI-layout state-dict file (default: width // 64, with a warning)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def pick_device(name=None):
    import torch

    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model_from_args(args):
    from clipforge.models import load_model

    heads = {}
    if getattr(args, "heads", None):
        try:
            v, t = (int(x) for x in args.heads.split(","))
        except ValueError:
            raise UsageError(f"--heads expects VISION,TEXT head counts such as 12,8; got {args.heads!r}") from None
        heads = {"vision_heads": v, "text_heads": t}
    model = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle, **heads)
    return model.to(pick_device(args.device)).eval()


def positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v
