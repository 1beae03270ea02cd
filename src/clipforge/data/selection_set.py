"""Image-caption selection sets (compositionality tests): a JSONL file, one instance per line, in one of two forms.

    {"image": "img/1.jpg", "positive": "a dog on a sofa", "negatives": ["a sofa on a dog"], "type": "swap-object"}
    {"images": ["a.jpg", "b.jpg"], "captions": ["a mug in some grass", "some grass in a mug"], "type": "relation"}

The first is SugarCrepe's form: one image, its true caption and one or more hard negatives. The second is
Winoground's "pair of pairs": images[i] is described by captions[i] (two of each in Winoground; any numbers
>= 1 here, the first min(images, captions) matched in order, as CLIP_benchmark does). `type` is optional (an
instance without one counts as "all"); other keys are kept in `meta`. Relative image paths are read from the
JSONL's folder (or `image_root`). A line that is not such an object is skipped and counted (`bad_record`),
never guessed at.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from clipforge.data.decode import SkipCounter
from clipforge.errors import ClipforgeError, UsageError

__all__ = ["SelectionInstance", "read_selection_set", "selection_record", "DEFAULT_TYPE"]

DEFAULT_TYPE = "all"  # metrics.caption_selection.UNTYPED: no per-type breakdown when it is the only type
MAX_LINE_BYTES = 1 << 20


@dataclass
class SelectionInstance:
    """One instance: `images[i]` is described by `captions[i]` for i < min(len(images), len(captions)); a
    selection instance (one image) has its positive first, then its negatives."""

    images: list[str]
    captions: list[str]
    type: str = DEFAULT_TYPE
    line: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def is_group(self) -> bool:
        """Winoground's form: more than one image."""
        return len(self.images) > 1


def _strings(value) -> Optional[list[str]]:
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    return None


def _parse(obj) -> Optional[tuple[list[str], list[str], str, dict]]:
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type", DEFAULT_TYPE)
    if not isinstance(kind, str) or not kind.strip():
        return None
    if "images" in obj or "captions" in obj:
        images, captions = _strings(obj.get("images")), _strings(obj.get("captions"))
        rest = {k: v for k, v in obj.items() if k not in ("images", "captions", "type")}
        if images is None or captions is None or len(captions) < 2 and len(images) < 2:
            return None
        return images, captions, kind.strip(), rest
    image, positive, negatives = obj.get("image"), obj.get("positive"), _strings(obj.get("negatives"))
    if not (isinstance(image, str) and image and isinstance(positive, str) and positive.strip() and negatives):
        return None
    rest = {k: v for k, v in obj.items() if k not in ("image", "positive", "negatives", "type")}
    return [image], [positive.strip(), *negatives], kind.strip(), rest


def read_selection_set(path, image_root: Optional[str] = None) -> tuple[list[SelectionInstance], SkipCounter]:
    """The instances of a selection JSONL (module doc) with image paths resolved, and the skipped lines."""
    path = os.fspath(path)
    if path.startswith("jsonl:"):
        path = path[len("jsonl:"):]
    root = image_root or os.path.dirname(os.path.abspath(path))
    skipped, out = SkipCounter(), []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ClipforgeError(f"cannot read the selection set {path}: {e.strerror or e}") from None
    with f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            parsed = None
            if len(raw) <= MAX_LINE_BYTES:
                try:
                    parsed = _parse(json.loads(raw.decode("utf-8")))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    parsed = None
            if parsed is None:
                skipped.add(f"line {n}", "bad_record")
                continue
            images, captions, kind, meta = parsed
            images = [p if os.path.isabs(p) else os.path.join(root, p) for p in images]
            out.append(SelectionInstance(images, captions, kind, n, meta))
    if not out:
        raise UsageError(f"{path}: no selection instances (each line is {{image, positive, negatives, type}} or "
                         f"{{images, captions, type}}; {skipped.total} line(s) were not)")
    return out, skipped


def selection_record(image: str, positive: str, negatives: list[str], kind: str, **meta) -> dict:
    """One line of the first form (what `data.negatives` writes)."""
    return {"image": image, "positive": positive, "negatives": list(negatives), "type": kind, **meta}
