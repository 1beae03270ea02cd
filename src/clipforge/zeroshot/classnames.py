"""Class names: from a list, a comma-separated string, a file (one per line, or a JSON list), or a source."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

from clipforge.errors import UsageError

__all__ = ["resolve_classnames", "read_labels"]


def resolve_classnames(source, classnames: Optional[Union[Sequence[str], str, Path]] = None) -> list[str]:
    """Class names from a list, a file (one per line, or a JSON list), or the source itself."""
    if classnames is None:
        names = getattr(source, "classnames", None)
        if not names:
            raise UsageError(f"{source.spec}: the source has no class names; pass `classnames` (a list or a file)")
        return list(names)
    if isinstance(classnames, (str, Path)):
        p = Path(classnames)
        if not p.is_file():
            raise UsageError(f"class-names file not found: {p}")
        text = p.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            return [str(c) for c in json.loads(text)]
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    return [str(c) for c in classnames]


def read_labels(labels=None, labels_file=None) -> list[str]:
    """Class names from a comma-separated string / list, or a file (one per line, or a JSON list)."""
    if (labels is None) == (labels_file is None):
        raise UsageError('give the class names with exactly one of `labels` ("cat,dog") or `labels_file`')
    if labels_file is not None:
        names = resolve_classnames(None, str(labels_file))
    elif isinstance(labels, str):
        names = [c.strip() for c in labels.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in labels if str(c).strip()]
    if not names:
        raise UsageError("`labels` / `labels_file` gave no class names")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise UsageError(f"class names must be unique; repeated: {dup[:5]}")
    return names
