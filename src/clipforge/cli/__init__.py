"""The `clipforge` command: a thin layer over importable functions.

Each subcommand lives in its own module under `clipforge.cli` and exposes `register(subparsers)`, which adds
its parser and sets `func=<callable(args) -> int|None>`. Modules are discovered, so adding a command is
adding a file. Errors: `UsageError` -> one line, exit 2; `ClipforgeError` -> one line, exit 1.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import warnings

from clipforge import __version__
from clipforge.errors import ClipforgeError, UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipforge",
        description="Train, classify, evaluate, index and search with contrastive image-text models.",
    )
    parser.add_argument("--version", action="version", version=f"clipforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import clipforge.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"clipforge.cli.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"  # the CLI user needs the message, not the library's source line


def main(argv=None) -> int:
    warnings.formatwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except UsageError as e:
        print(f"clipforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ClipforgeError as e:
        print(f"clipforge {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
