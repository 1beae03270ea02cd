"""`--token-merge R` / `--merge-method` for the commands that embed images (not a subcommand itself).

The library takes them as `token_merge` / `merge_method` (`clipforge.models.token_merge`, run by the torch
engine); `engine_options` passes them on wherever the command offers them.
"""
from __future__ import annotations

import argparse

MERGE_METHODS = ("tome", "pitome")  # clipforge.models.token_merge.METHODS (kept torch-free for --help)


def add_token_merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-merge", default=None, metavar="R",
                   help="ViT image towers: merge R similar tokens in every transformer block (or R1,R2,... one "
                        "count per block): faster, approximate; 0 exact (default). Measured speed and accuracy "
                        "per R: docs/token_merge.md. Needs --engine torch")
    p.add_argument("--merge-method", choices=MERGE_METHODS, default=None,
                   help="which tokens merge: tome (bipartite matching on attention keys, the default) or pitome "
                        "(energy score: merge within large clusters, keep isolated tokens)")


def token_merge_options(args) -> dict:
    """`token_merge` / `merge_method` for the library, for the flags given (none when the command has none)."""
    out = {}
    if getattr(args, "token_merge", None) is not None:
        out["token_merge"] = args.token_merge
    if getattr(args, "merge_method", None) is not None:
        out["merge_method"] = args.merge_method
    return out
