"""The `clipforge` command: a thin layer over importable functions.

Each subcommand lives in its own module under `clipforge.cli` and exposes `register(subparsers)`, which adds
its parser and sets `func=<callable(args) -> int|None>`. Modules are discovered, so adding a command is
adding a file. Errors: `UsageError` -> one line, exit 2; `ClipforgeError` -> one line, exit 1.

A write that fails on a full or read-only disk (ENOSPC, EDQUOT, EROFS: an `OSError`, or whatever a library
wrapped it in) is one line naming the path and saying nothing was lost, exit 1 (`disk_failure`).

Library errors name parameters in backticks (`k_shot`); `translate_error` rewrites each one the command has a
flag for into that flag (--k-shot), so a Python caller reads parameter names and a CLI user reads flags.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import sys
import warnings

from clipforge import __version__
from clipforge.cli import _common
from clipforge.errors import NOTHING_LOST, ClipforgeError, DiskError, UsageError, disk_error


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The whole parser. With `argv`, only the command it names gets the flags that come from the registries
    (zero-shot methods, eval tasks), so other commands and `--help` do not import torch to build them."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    _common.ACTIVE = None if argv is None else next((a.replace("-", "_") for a in argv
                                                     if a.replace("-", "_") in names), "")
    parser = argparse.ArgumentParser(
        prog="clipforge",
        description="Train, classify, evaluate, index and search with contrastive image-text models.",
    )
    parser.add_argument("--version", action="version", version=f"clipforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(names):
        module = importlib.import_module(f"clipforge.cli.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


_FLAG_ALIASES = {"vision_heads": "--heads VISION,TEXT", "text_heads": "--heads VISION,TEXT"}  # one flag, two params


def command_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag a user types (the longest option string), over a parser and its sub-parsers."""
    out: dict[str, str] = {k: v for k, v in _FLAG_ALIASES.items() if any(
        a.dest == "heads" for a in parser._actions)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for dest, flag in command_flags(sub).items():
                    out.setdefault(dest, flag)
        elif action.option_strings and action.dest not in ("help", "version"):
            out.setdefault(action.dest, max(action.option_strings, key=len))
    return out


_PARAM = re.compile(r"`([A-Za-z_][\w.]*)`")


def translate_error(message: str, flags: dict[str, str]) -> str:
    """Replace each backticked parameter name that has a flag with the flag; others keep their backticks."""
    return _PARAM.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


# what the commands that write write: the path a disk error names when the failing call named none
_OUTPUT_ARGS = ("index_dir", "out_dir", "out")


def disk_failure(e: BaseException, args) -> DiskError | None:
    """`e` as a one-line `DiskError` when a write of this command failed on a full or read-only disk."""
    target = next((getattr(args, a) for a in _OUTPUT_ARGS if isinstance(getattr(args, a, None), str)), None)
    err = disk_error(e, target)
    if err is not None and err.note == NOTHING_LOST and getattr(args, "command", None) == "train":
        note = "nothing was lost: the run's checkpoints so far are intact" + (
            "" if getattr(args, "resume", None) else " (add --resume latest to continue from the last one)")
        err = DiskError(err.errno, err.path, note)
    return err


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    flags = command_flags(_command_parser(parser, args.command)) if getattr(args, "command", None) else {}

    def one_line_warning(message, category, filename, lineno, line=None) -> str:
        # the CLI user needs the message in flag terms, not the library's source line
        return f"warning: {translate_error(str(message), flags)}\n"

    warnings.formatwarning = one_line_warning
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every SIMD variant it tries
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe surfaces here, not at interpreter exit
    except BrokenPipeError:
        # `clipforge ... | head`: the reader left; stop quietly, as a SIGPIPE-killed tool would (exit 141).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001 - anything but a ClipforgeError or a disk fault is re-raised
        disk = disk_failure(e, args)
        if disk is None and not isinstance(e, ClipforgeError):
            raise
        msg = translate_error(str(disk or e), flags)
        print(f"clipforge {args.command}: error: {msg}", file=sys.stderr)
        return 2 if disk is None and isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
