"""Demo datasets inside a suite: `{NAME.KEY}` in a cell's dataset (or image_root) is a path of demo set NAME.

    dataset: imagefolder:{digits.val_dir}      # the digits demo's held-out image folder
    dataset: jsonl:{photos.manifest}           # the captioned photos
    dataset: {counting.negatives}              # a selection JSONL of rule-based hard negatives (below)

NAME is one of `DEMO_BUILDERS` (digits, fonts, photos, counting); KEY is any path its builder returns
(`clipforge data demo` prints them: val_dir, val_manifest, train_manifest, manifest, images_dir, ...)
or `negatives`: `data.negatives.write_negatives` run on the set's captioned held-out manifest
(`NEGATIVE_KINDS`, seed 0), for the `image-caption-selection` task. A set is built once, on first use, under
`data_dir` (the benchmark folder's `data/`), and reused by later runs (the builders are idempotent).
"""
from __future__ import annotations

import re
from pathlib import Path

from clipforge.data import open_source
from clipforge.data.demo_counting import build_counting
from clipforge.data.demo_sets import build_digits, build_fonts, build_photos
from clipforge.data.negatives import write_negatives
from clipforge.errors import UsageError

__all__ = ["DEMO_BUILDERS", "resolve_demo_paths", "demo_names"]

DEMO_BUILDERS = {"digits": build_digits, "fonts": build_fonts, "photos": build_photos, "counting": build_counting}
_CAPTIONED = {"digits": "val_manifest", "fonts": "val_manifest", "counting": "val_manifest", "photos": "manifest"}
NEGATIVE_KINDS = ("swap-attribute", "swap-object", "replace-attribute", "replace-object", "replace-number",
                  "replace-relation", "shuffle")
_REF = re.compile(r"\{(" + "|".join(DEMO_BUILDERS) + r")\.(\w+)\}")


def demo_names(text) -> list[str]:
    """The demo sets a dataset spec refers to."""
    return [m.group(1) for m in _REF.finditer(str(text or ""))]


def _negatives(name: str, paths: dict, data_dir: Path) -> str:
    out = data_dir / f"{name}-negatives.jsonl"
    if not out.is_file():  # written atomically: a finished file under its final name, or none
        write_negatives(open_source(f"jsonl:{paths[_CAPTIONED[name]]}"), out, NEGATIVE_KINDS, seed=0)
    return str(out)


def resolve_demo_paths(text, data_dir, where: str = "dataset", built: dict | None = None):
    """`text` with each `{NAME.KEY}` replaced by that demo path (building the set under `data_dir` first);
    `built` caches {NAME: paths} across calls. A KEY the set does not have is a `UsageError` naming `where`."""
    if text is None or not _REF.search(str(text)):
        return text
    built = {} if built is None else built
    data_dir = Path(data_dir)

    def one(m: re.Match) -> str:
        name, key = m.group(1), m.group(2)
        if name not in built:
            data_dir.mkdir(parents=True, exist_ok=True)
            built[name] = DEMO_BUILDERS[name](str(data_dir / name))
        paths = built[name]
        if key == "negatives":
            return _negatives(name, paths, data_dir)
        if not isinstance(paths.get(key), str):
            keys = sorted(k for k, v in paths.items() if isinstance(v, str)) + ["negatives"]
            raise UsageError(f"`{where}`: demo set {name} has no path {key!r} (it has {', '.join(keys)})")
        return paths[key]

    return _REF.sub(one, str(text))
