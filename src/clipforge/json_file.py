"""Reading a JSON file clipforge did not necessarily write (a checkpoint's config.json, an index's index.json, an
adapter config, a store manifest): bounded in size, and every way it can be broken is one line that says what
is wrong with the file — never Python's internals (`sys.set_int_max_str_digits`, a RecursionError, a codec).
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Union

from clipforge.errors import ClipforgeError

__all__ = ["MAX_JSON_BYTES", "describe_json_error", "read_json_file", "read_json_object"]

MAX_JSON_BYTES = 64 << 20  # no config or manifest clipforge writes comes near this


def describe_json_error(e: BaseException) -> str:
    """What was wrong with the JSON text, in the input's terms."""
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 text (byte {e.start})"
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    if isinstance(e, ValueError) and "digits" in str(e):  # int() of a longer literal: Python's limit
        return f"a number with more than {getattr(sys, 'get_int_max_str_digits', lambda: 4300)():,} digits"
    return " ".join(str(e).split())[:200]


def read_json_file(path: Union[str, os.PathLike], max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed JSON of `path`; `ClipforgeError` naming the file when it is unreadable, larger than
    `max_bytes`, not UTF-8 or not valid JSON."""
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO under the file's name must not hang the reader; only a regular file is read
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ClipforgeError(f"cannot read {p}: not a regular file")
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ClipforgeError(f"cannot read {p}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise ClipforgeError(f"{p} is over {max_bytes >> 20} MB: not a file clipforge reads as JSON")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ClipforgeError(f"{p} is not valid JSON ({describe_json_error(e)})") from None


def read_json_object(path: Union[str, os.PathLike], max_bytes: int = MAX_JSON_BYTES) -> dict:
    """`read_json_file`, and the document must be a JSON object (a config file whose top level is a list or a
    number is one `ClipforgeError` line, not an AttributeError wherever it is first used)."""
    value = read_json_file(path, max_bytes)
    if not isinstance(value, dict):
        raise ClipforgeError(f"{path} is not a JSON object (its top level is a {type(value).__name__})")
    return value
