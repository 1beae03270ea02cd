"""open_clip's / OpenAI's ModifiedResNet image tower layout <-> the native ResNet tower (`models/resnet.py`).

The two are the same network under other module names, so the conversion is a renaming of state-dict keys
(BatchNorm running statistics and counters included), one rule per module:

    native                              open_clip (`visual.` prefix on both sides)
    stem.0 / 1 / 3 / 4 / 6 / 7          conv1 / bn1 / conv2 / bn2 / conv3 / bn3    (the 3-conv stem)
    stages.I.J.<conv|bn><1..3>          layerI+1.J.<conv|bn><1..3>                 (bottleneck blocks)
    stages.I.J.downsample.1 / 2         layerI+1.J.downsample.0 / 1                (open_clip's pool is "-1")
    attnpool.*                          attnpool.*                                 (same names)

open_clip's config for it: `vision_cfg.layers` a list of 4 block counts, `width` the stem width, `head_width`
(the attention pool has width * 32 / head_width heads), `image_size`.
"""
from __future__ import annotations

import math
import re
from typing import Optional

from clipforge.errors import ClipforgeError
from clipforge.models.convert.common import KeyReader, StateDict

_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
_STEM_BACK = {v: k for k, v in _STEM.items()}
_DOWNSAMPLE = {"1": "0", "2": "1"}  # native Sequential(pool, conv, bn) -> open_clip's ("-1" pool, "0", "1")
_DOWNSAMPLE_BACK = {v: k for k, v in _DOWNSAMPLE.items()}
_BLOCK_PART = r"((?:conv|bn)[123]\.\w+)"

_NATIVE = [(re.compile(r"^visual\.stem\.(\d)\.(\w+)$"), lambda m: m[1] in _STEM and f"visual.{_STEM[m[1]]}.{m[2]}"),
           (re.compile(rf"^visual\.stages\.(\d+)\.(\d+)\.{_BLOCK_PART}$"),
            lambda m: f"visual.layer{int(m[1]) + 1}.{m[2]}.{m[3]}"),
           (re.compile(r"^visual\.stages\.(\d+)\.(\d+)\.downsample\.(\d)\.(\w+)$"),
            lambda m: m[3] in _DOWNSAMPLE
            and f"visual.layer{int(m[1]) + 1}.{m[2]}.downsample.{_DOWNSAMPLE[m[3]]}.{m[4]}"),
           (re.compile(r"^visual\.attnpool\.(\w+(?:\.\w+)?)$"), lambda m: f"visual.attnpool.{m[1]}")]
_OPEN_CLIP = [(re.compile(r"^visual\.((?:conv|bn)[123])\.(\w+)$"), lambda m: f"visual.stem.{_STEM_BACK[m[1]]}.{m[2]}"),
              (re.compile(rf"^visual\.layer([1-4])\.(\d+)\.{_BLOCK_PART}$"),
               lambda m: f"visual.stages.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
              (re.compile(r"^visual\.layer([1-4])\.(\d+)\.downsample\.([01])\.(\w+)$"),
               lambda m: f"visual.stages.{int(m[1]) - 1}.{m[2]}.downsample.{_DOWNSAMPLE_BACK[m[3]]}.{m[4]}"),
              (re.compile(r"^visual\.attnpool\.(\w+(?:\.\w+)?)$"), lambda m: f"visual.attnpool.{m[1]}")]


def _rename(key: str, rules) -> Optional[str]:
    for pattern, target in rules:
        m = pattern.match(key)
        if m:
            return target(m) or None
    return None


def resnet_to_open_clip(sd: StateDict) -> StateDict:
    """The native ResNet tower's `visual.*` entries under open_clip's ModifiedResNet names."""
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("visual."):
            name = _rename(k, _NATIVE)
            if name is None:
                raise ClipforgeError(f"native ResNet key {k!r} has no open_clip ModifiedResNet name")
            out[name] = v
    return out


def resnet_from_open_clip(r: KeyReader, out: StateDict) -> None:
    """Pop every ModifiedResNet `visual.*` key `r` holds into `out` under native names; keys of no rule stay
    in `r` (its `finish` reports them), missing ones are the strict load's error."""
    for k in [k for k in r.state if k.startswith("visual.")]:
        name = _rename(k, _OPEN_CLIP)
        if name is not None:
            out[name] = r.pop(k)


def is_resnet_layout(state: StateDict) -> bool:
    return "visual.attnpool.positional_embedding" in state and "visual.layer1.0.conv1.weight" in state


def infer_resnet(state: StateDict, heads: int) -> dict:
    """VisionConfig fields of a ModifiedResNet state dict (`heads` given: shapes do not show it)."""
    counts = []
    for stage in range(1, 5):
        idx = {int(m[1]) for k in state for m in [re.match(rf"visual\.layer{stage}\.(\d+)\.", k)] if m}
        if not idx:
            raise ClipforgeError(f"ModifiedResNet state dict without visual.layer{stage}: not a 4-stage ResNet")
        counts.append(max(idx) + 1)
    n_pos = state["visual.attnpool.positional_embedding"].shape[0]
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise ClipforgeError(f"visual.attnpool.positional_embedding has {n_pos} rows: not 1 + a square grid")
    return {"arch": "resnet", "image_size": 32 * grid, "width": int(state["visual.conv3.weight"].shape[0]),
            "heads": heads, "stage_layers": tuple(counts)}
