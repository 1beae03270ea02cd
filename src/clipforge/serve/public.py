"""What the service shows of an index: an item's public form and the searcher's stats, without server paths.

`HIDDEN_COLUMNS` hold the server's paths (the file of an item, the shard it came from): never shown, never
filterable over HTTP (the app opens its searcher with them hidden, so the searcher itself refuses such filters).
A hit is rendered by `Hit.to_dict(item=public_item(...))`, the one JSON form of a hit.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from clipforge.models.display_name import display_name

__all__ = ["HIDDEN_COLUMNS", "public_item", "public_stats"]

HIDDEN_COLUMNS = ("path", "__url__")  # server paths: the file of an item, the shard it came from
_ABS_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\](?:[^\s/\\:'\"]+[/\\])+")  # the folders of an absolute path


def _short_ref(ref) -> str:
    """A model or source reference without its folders: 'files:/srv/photos' -> 'files:photos'."""
    ref = str(ref)
    kind, sep, rest = ref.rpartition(":") if ":" in ref and not ref.startswith("/") else ("", "", ref)
    if rest.startswith(("/", "\\")) or (len(rest) > 2 and rest[1] == ":"):  # absolute: keep the last name
        rest = Path(rest.rstrip("/\\")).name or rest
    return f"{kind}{sep}{rest}"


def public_item(item: dict) -> dict:
    """An item ({"id": ..., **metadata}) as the API shows it: no server paths, captions decoded, a thumbnail
    URL."""
    d = {k: v for k, v in item.items() if k not in HIDDEN_COLUMNS}
    if isinstance(d.get("meta_error"), str):  # indexes built before it was relative may name absolute paths
        d["meta_error"] = _ABS_PATH.sub("", d["meta_error"])
    if isinstance(d.get("captions"), str):
        try:
            d["captions"] = json.loads(d["captions"])
        except ValueError:
            pass
    for k, v in d.items():
        if isinstance(v, float) and not np.isfinite(v):
            d[k] = None
    d["thumb"] = f"/thumb/{d['id']}"
    return d


def public_stats(stats: dict, hidden=HIDDEN_COLUMNS) -> dict:
    """Engine stats without server paths (model, source, a reranker's model or index); a model is named by
    `display_name` (its run's name, not `final`); `columns` lists only the filterable ones."""
    out = {**stats, "model": display_name(stats["model"]), "source": _short_ref(stats["source"]),
           "columns": [c for c in stats.get("columns", []) if c not in hidden]}
    if "rerank" in out:
        out["rerank"] = {k: (display_name(v) if k == "model" else _short_ref(v) if k == "index" else v)
                         for k, v in out["rerank"].items()}
    return out
