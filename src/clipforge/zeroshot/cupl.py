"""CuPL: class descriptions ("Customized Prompts via Language models") as zero-shot prompts.

Descriptions come as JSON `{class name: [sentence, ...]}` (the format CuPL released). The class vector is
the normalised mean of the normalised sentence embeddings; optionally the class's template prompts join
the same pool, every text with the same weight (`build_classifier(..., method="cupl",
pool_templates=True)`).

Class names are matched exactly first, then case- and whitespace-insensitively.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

from clipforge.errors import UsageError
from clipforge.zeroshot.templates import fill

__all__ = ["load_descriptions", "match_descriptions", "cupl_groups", "unnamed_classes", "DescriptionsWarning"]


class DescriptionsWarning(UserWarning):
    """Descriptions that cannot tell their classes apart the way the method uses them."""


def load_descriptions(path) -> dict[str, list[str]]:
    """Read and validate a `{class: [sentences]}` JSON file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"descriptions file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"descriptions file {str(p)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"descriptions file {str(p)!r} must hold an object {{class: [sentences]}}")
    out = {}
    for k, v in data.items():
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise UsageError(f"descriptions for {k!r} in {p.name} must be a list of strings")
        out[str(k)] = [s.strip() for s in v if s.strip()]
    return out


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def match_descriptions(classnames: Sequence[str], descriptions: dict[str, list[str]]) -> list[list[str]]:
    """Descriptions per class in `classnames` order ([] where none are given)."""
    loose = {_key(k): v for k, v in descriptions.items()}
    return [list(descriptions.get(c, loose.get(_key(c), []))) for c in classnames]


def unnamed_classes(classnames: Sequence[str], per_class: Sequence[Sequence[str]]) -> list[str]:
    """The classes none of whose descriptions names them (case, spaces and underscores aside)."""
    return [c for c, d in zip(classnames, per_class) if d and not any(_key(c) in _key(t) for t in d)]


def cupl_groups(
    classnames: Sequence[str], descriptions: dict[str, list[str]], templates: Sequence[str] | None = None
) -> list[list[str]]:
    """The texts pooled into each class vector: its descriptions (+ its template prompts when given).

    Without templates every class needs at least one description; the error names the ones missing.
    """
    per_class = match_descriptions(classnames, descriptions)
    if templates is None:
        missing = [c for c, d in zip(classnames, per_class) if not d]
        if missing:
            raise UsageError(
                f"{len(missing)} class(es) have no descriptions: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
                + " (add them, or pool with templates)"
            )
        unnamed = unnamed_classes(classnames, per_class)
        if unnamed:  # CuPL alone on the digits demo's shape descriptions scored 0.033, below chance (0.1)
            warnings.warn(
                f"{len(unnamed)} of {len(classnames)} classes have no description that names them "
                f"(e.g. {unnamed[0]!r}): CuPL pools the descriptions alone, so those classes are told apart only "
                "by what their sentences say (on the digits demo this scored below chance); pool the template "
                "prompts too (`pool_templates`), or use `method`='describe', which puts the class name in every "
                "prompt", DescriptionsWarning, stacklevel=3)
        return per_class
    return [d + [fill(t, c) for t in templates] for c, d in zip(classnames, per_class)]
