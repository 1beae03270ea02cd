"""`display_name(ref)`: the name a model is shown by (web page, `/stats`, report tables and charts).

A model reference is kept whole wherever it is recorded (results.jsonl, index.json): it is what loads the
model again. Shown to a person, a training run's checkpoint is named by its run, not by its folder — every
run ends in `RUN/final`, so the folder name alone tells nothing. The rule, in order:

  - a checkpoint directory whose config.json has a top-level string `name`: that name;
  - `RUN/final` (the trainer's last weights, model or adapter): RUN's folder name;
  - `RUN/checkpoints/step-N` (a step checkpoint): `RUN@step-N`;
  - any other path: its last component;
  - a registered name, or a `kind:` reference (`hf:org/model`, `open_clip:ViT-B-32`): unchanged, except
    that a path after `kind:` is named by the same rule (`hf:/srv/models/x` -> `hf:x`).

No folders above the run appear, so a server's directory layout is not shown to its users.
"""
from __future__ import annotations

import os
import re
from pathlib import PurePath, PurePosixPath, PureWindowsPath

from clipforge.errors import ClipforgeError
from clipforge.models.checkpoint import read_config_json

__all__ = ["display_name"]

_KIND = re.compile(r"^([A-Za-z][A-Za-z0-9_+-]*):(?![\\/]{2})(.*)$")  # hf:x, open_clip:x; not C:\ or a URL


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or os.path.isdir(s)


def _parts(s: str) -> list[str]:
    p: PurePath = PureWindowsPath(s) if "\\" in s else PurePosixPath(s)
    return [x for x in p.parts if x not in ("/", "\\") and not x.endswith(("\\", ":"))]


def _configured_name(path: str) -> str | None:
    try:
        meta = read_config_json(path) if os.path.isdir(path) else None
    except (ClipforgeError, OSError):
        return None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name.strip() if isinstance(name, str) and name.strip() else None


def _path_name(path: str) -> str:
    named = _configured_name(path)
    if named:
        return named
    parts = _parts(path.rstrip("/\\")) or [path]
    last = parts[-1]
    if last == "final" and len(parts) > 1:
        return parts[-2]
    if len(parts) > 2 and parts[-2] == "checkpoints":
        return f"{parts[-3]}@{last}"
    return last


def display_name(ref) -> str:
    """The name `ref` (a model reference or a path) is shown by; see the module docstring for the rule."""
    s = str(ref)
    m = _KIND.match(s)
    if m and not (len(m.group(1)) == 1 and s[2:3] in ("\\", "/")):  # a Windows drive is not a kind
        kind, rest = m.groups()
        return f"{kind}:{_path_name(rest)}" if rest.startswith(("/", "\\", ".")) else s
    return _path_name(s) if _looks_like_path(s) else s
