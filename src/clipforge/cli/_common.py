"""Argument helpers shared by subcommands (not a subcommand itself).

CLI modules import the library inside their `run` functions: the CLI imports every command module to build
its parser, so top-level imports would load torch, scikit-learn, faiss and FastAPI for `clipforge --help`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable

from clipforge.errors import UsageError
from clipforge.registry import Option

ACTIVE = None  # the command being parsed ("" none, None all): set by `build_parser`


def full_parser_for(command: str) -> bool:
    """Whether `command`'s parser is built in full: with the flags that need a library import (registry
    options, choices computed by torch-importing modules). Only the command being run, or all of them when
    the whole parser is asked for, pays those imports. `command` is the module name (embed_dataset for
    `clipforge embed-dataset`)."""
    return ACTIVE is None or ACTIVE == command


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "OUT") -> None:
    """`--overwrite`: replace an existing file (or folder) clipforge did not write there. Without it, a
    command replaces only its own earlier output; a link, device or FIFO is refused either way."""
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} even when it exists and is not an earlier output of this command "
                        "(never a folder, link, device or FIFO)")


def add_model_args(p: argparse.ArgumentParser, default: str = None) -> None:
    p.add_argument("--model", "-m", default=default, required=default is None,
                   help="registered name, checkpoint dir, hf:ORG/NAME, open_clip:ARCH/TAG, or local HF dir")
    p.add_argument("--weights", default=None, help="weights file (.safetensors) for a registered architecture")
    p.add_argument("--trust-pickle", action="store_true", help="allow loading pickled .pt/.bin weights")
    p.add_argument("--heads", default=None, metavar="VISION,TEXT",
                   help="attention heads of an OpenAI-layout state-dict file (default: width // 64, with a warning)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="the model's tokenizer: a directory of tokenizer files (tokenizer.json, vocab.json + "
                        "merges.txt, a clipforge tokenizer) or OpenAI's bpe_simple_vocab_16e6.txt.gz; needed for an "
                        "open_clip / OpenAI checkpoint without open_clip installed and without such files beside it")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--truncate", default="warn", choices=["warn", "silent", "error"],
                   help="texts longer than the model's context: cut them and say so once (warn, the default), "
                        "cut quietly (silent), or stop (error); `clipforge stretch` makes a longer context")
    add_engine_args(p)
    add_token_merge_args(p)


ENGINE_CHOICES = ("auto", "torch", "onnx", "openvino")  # clipforge.encode.ENGINES (kept torch-free for --help)


def add_engine_args(p: argparse.ArgumentParser, default: str | None = "torch", extra: tuple = (),
                    extra_help: str = "", metavar: str | None = None) -> None:
    """--engine and --threads: which runtime encodes (see `clipforge.encode`), with how many threads. `extra`:
    more accepted values (not shown when `metavar` is given)."""
    p.add_argument("--engine", choices=ENGINE_CHOICES + tuple(extra), default=default, metavar=metavar,
                   help=f"inference engine (default {default or 'the one the index was built with'}): torch "
                        "(PyTorch eager, the reference), onnx (ONNX Runtime), openvino, or auto (the fastest "
                        "measured on this machine for this model; the first use per model exports and measures, "
                        "cached in ~/.cache/clipforge)" + extra_help)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads for the engine (default: all cores; auto measures 1 vs all for small "
                        "models). Results do not depend on it")


def engine_options(args) -> dict:
    """The engine keyword arguments for `Encoder.from_model` / `Encoder.load` from --engine / --threads (and
    --token-merge / --merge-method where the command offers them)."""
    engine = getattr(args, "engine", None)
    return {"engine": engine if engine in ENGINE_CHOICES else "torch", "threads": getattr(args, "threads", None),
            **token_merge_options(args)}


MERGE_METHODS = ("tome", "pitome")  # clipforge.models.token_merge.METHODS (kept torch-free for --help)


def add_token_merge_args(p: argparse.ArgumentParser, default: str = "0 exact (default)") -> None:
    """--token-merge / --merge-method; `default` says what an unset --token-merge means."""
    p.add_argument("--token-merge", default=None, metavar="R",
                   help="ViT image towers: merge R similar tokens in every transformer block (or R1,R2,... one "
                        f"count per block): faster, approximate; {default}. Measured speed and accuracy "
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


def load_encoder_from_args(args):
    """The model named by --model/--weights/--trust-pickle on --device, as an `Encoder` run by --engine
    (weights as saved for torch; exported graphs for onnx / openvino). A registered name without weights is
    initialised from a fixed seed, as `Encoder.load` does: every run embeds alike (a saved head, an index)."""
    import torch

    from clipforge.encode import Encoder, pick_device
    from clipforge.models import load_model

    heads = {}
    if getattr(args, "heads", None):
        try:
            v, t = (int(x) for x in args.heads.split(","))
        except ValueError:
            raise UsageError(f"--heads expects VISION,TEXT head counts such as 12,8; got {args.heads!r}") from None
        heads = {"vision_heads": v, "text_heads": t}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = load_model(args.model, weights=args.weights, trust_pickle=args.trust_pickle,
                           tokenizer=getattr(args, "tokenizer", None), **heads)
    if getattr(args, "truncate", None) and getattr(model, "tokenizer", None) is not None:
        model.tokenizer = model.tokenizer.with_options(truncate=args.truncate)
    return Encoder.from_model(model, device=pick_device(args.device), ref=args.model, **engine_options(args))


def add_options(p: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Offer registry options as flags (--mad-threshold for `mad_threshold`); unset flags stay None."""
    for o in options:
        if not o.cli:
            continue
        flag = "--" + o.name.replace("_", "-")
        if o.type is bool:
            p.add_argument(flag, dest=o.name, action="store_const", const=True, default=None, help=o.help)
        else:
            p.add_argument(flag, dest=o.name, type=o.type, choices=o.choices, default=None, help=o.help)


def option_values(args, options: Iterable[Option]) -> dict:
    """The values of the flags `add_options` added (None where not given)."""
    return {o.name: getattr(args, o.name, None) for o in options if o.cli}


def positive_int(value: str) -> int:  # noqa: D103 (used above at call time)
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


INT64_MAX = 2**63 - 1


def parse_item_ids(values: Iterable[str], flag: str = "--id") -> list[int]:
    """Item ids as typed: ASCII decimal digits within int64 (int() would also take "1_0", "+1", " 1" and
    other scripts' digits, and a huge number could only ever be "not found"); anything else is a one-line
    `UsageError` naming `flag`."""
    out = []
    for v in values:
        if not (v.isascii() and v.isdigit()) or int(v) > INT64_MAX:
            shown = v if len(v) <= 40 else v[:37] + "..."
            raise UsageError(f"{flag} {shown!r}: an item id is decimal digits from 0 to {INT64_MAX}")
        out.append(int(v))
    return out


def add_collection_job_args(p: argparse.ArgumentParser, *, model_help: str, out_help: str) -> None:
    """SRC, --model, --out, --batch-size, --workers: what every whole-collection encoding job takes."""
    p.add_argument("source", help="data source spec: a folder, files:DIR, csv:/jsonl:/parquet: manifest, wds:...")
    p.add_argument("--model", "-m", required=True, help=model_help)
    p.add_argument("--out", "-o", dest="out_dir", required=True, help=out_help)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader workers decoding images (0: in-process); per actor with --executor ray")


def add_executor_args(p: argparse.ArgumentParser, command: str) -> None:
    """Two axes for a whole-collection job: --engine / --threads, the inference runtime (torch, onnx, openvino,
    auto) wherever the model runs, and --executor, where the job runs (local: this process; ray: a Ray Data
    actor pool), with every option the executors declare (--address, --num-gpus-per-worker, ...).

    `--engine ray` (and `--engine local`), the old spelling that mixed the two, still parses for one release:
    `executor_from_args` reads it as --executor with a deprecation line."""
    executors: tuple = ()
    if full_parser_for(command):
        from clipforge.scale import EXECUTORS

        executors = tuple(EXECUTORS.names())
    add_engine_args(p, extra=executors, metavar="{" + ",".join(ENGINE_CHOICES) + "}",
                    extra_help="; the executor's workers run it too")
    p.add_argument("--executor", choices=executors or None, default=None,
                   help="where the job runs: local (this process, the default; --workers decoding processes) or "
                        "ray (a Ray Data actor pool on a local or remote Ray cluster; docs/scale.md)")
    if executors:
        add_options(p, EXECUTORS.all_options().values())


def executor_from_args(args) -> tuple[str, dict]:
    """(executor name, the executor options given on the command line), from --executor (default local). The
    deprecated `--engine ray` / `--engine local` mean --executor ray / local (a one-line warning on stderr;
    the runtime is then torch, as it was)."""
    from clipforge.scale import EXECUTORS

    given = option_values(args, EXECUTORS.all_options().values())
    name = getattr(args, "executor", None)
    old = getattr(args, "engine", None)
    if old in EXECUTORS.names() and old not in ENGINE_CHOICES:
        print(f"warning: --engine {old} is deprecated and will be removed in the next release: use --executor {old} "
              f"(--engine names the inference runtime: {', '.join(ENGINE_CHOICES)})", file=sys.stderr)
        if name is not None and name != old:
            raise UsageError(f"--engine {old} (the deprecated spelling of --executor {old}) and --executor {name} "
                             "disagree: give --executor alone")
        name = old
    return name or "local", {k: v for k, v in given.items() if v is not None}


