"""Evaluation datasets: any data-layer source, CLIP_benchmark's webdataset layout, Karpathy-split JSON.

`open_eval_dataset(spec, split=None)` -> EvalDataset(source, classnames, templates, name, split):

- CLIP_benchmark layout (a directory): `classnames.txt`, `zeroshot_classification_templates.txt` (optional),
  and tar shards per split in `<split>/` (`test/0.tar`, ...), each sample with an image and a `.cls` label
  (classification) or `.txt` captions, one per line (retrieval). The split defaults to "test"; its templates
  become the dataset's default templates.
- Karpathy-split JSON (`dataset_flickr30k.json`, `dataset_coco.json`): {"images": [{"filename",
  "filepath"?, "split", "sentences": [{"raw"}]}]}. Images are found at IMAGE_ROOT/filepath/filename (or
  IMAGE_ROOT/filename); IMAGE_ROOT defaults to the JSON's folder. The split defaults to "test". A spec
  `karpathy:PATH` forces this reader; a `.json` file whose top level holds "images" is detected.
- Anything else goes to `clipforge.data.open_source` (folders, manifests, shards).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional

from clipforge.data.sample import Sample
from clipforge.data.sources import open_source
from clipforge.data.sources.base import Source
from clipforge.data.sources.wds import WdsSource
from clipforge.errors import ClipforgeError, UsageError
from clipforge.zeroshot.templates import load_template_file

__all__ = ["EvalDataset", "KarpathySource", "open_eval_dataset", "is_clip_benchmark_dir", "is_karpathy_json"]

CB_CLASSNAMES = "classnames.txt"
CB_TEMPLATES = "zeroshot_classification_templates.txt"


@dataclass
class EvalDataset:
    source: Source
    name: str  # the spec as given (recorded in results)
    classnames: Optional[List[str]] = None
    templates: Optional[List[str]] = None  # the dataset's own default templates, if it ships some
    split: Optional[str] = None


class KarpathySource(Source):
    """Images of one split of a Karpathy-style caption JSON; every sentence is a caption of its image."""

    kind = "karpathy"

    def __init__(self, path: str, *, split: str = "test", image_root: Optional[str] = None,
                 spec: Optional[str] = None, **kw):
        super().__init__(spec or f"karpathy:{path}", **kw)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise ClipforgeError(f"cannot read {path}: {e}") from None
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise UsageError(f"{path}: expected a Karpathy-split JSON object with an 'images' list")
        self.root = image_root or os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(self.root):
            raise ClipforgeError(f"image root {self.root!r} does not exist")
        splits = {}
        self.items: list[tuple[str, str, list[str]]] = []  # (id, path, captions)
        for i, entry in enumerate(data["images"]):
            if not isinstance(entry, dict) or "filename" not in entry:
                self.open_skipped.add(f"{os.path.basename(path)} images[{i}]", "bad_record")
                continue
            s = entry.get("split", "")
            splits[s] = splits.get(s, 0) + 1
            if s != split:
                continue
            caps = [str(x.get("raw", "")).strip() for x in entry.get("sentences", []) if isinstance(x, dict)]
            rel = os.path.join(entry.get("filepath") or "", entry["filename"])
            p = os.path.join(self.root, rel)
            if not os.path.exists(p) and entry.get("filepath"):
                p = os.path.join(self.root, entry["filename"])  # images kept in one flat folder
            self.items.append((rel.replace(os.sep, "/"), p, [c for c in caps if c]))
        if not self.items:
            raise UsageError(f"{path}: split {split!r} has no images; splits present: {splits}")
        self.split = split
        self.skipped = self.open_skipped.copy()

    def __len__(self) -> int:
        return len(self.items)

    def _get(self, index: int) -> Sample:
        sid, path, caps = self.items[index]
        return Sample(id=sid, captions=list(caps), path=path, decode_options=self.decode_options)


def is_karpathy_json(path: str) -> bool:
    """A .json file whose top-level object has an "images" list (reads the file)."""
    if not (path.lower().endswith(".json") and os.path.isfile(path)):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
        if not head.startswith("{"):
            return False
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("images"), list)


def is_clip_benchmark_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CB_CLASSNAMES)) and any(
        os.path.isdir(os.path.join(path, d)) and any(n.endswith(".tar") for n in os.listdir(os.path.join(path, d)))
        for d in os.listdir(path))


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def _open_clip_benchmark(root: str, spec: str, split: Optional[str]) -> EvalDataset:
    split = split or "test"
    shard_dir = os.path.join(root, split)
    if not os.path.isdir(shard_dir):
        have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise UsageError(f"{root}: no split {split!r} (folders: {have})")
    classnames = _read_lines(os.path.join(root, CB_CLASSNAMES))
    tfile = os.path.join(root, CB_TEMPLATES)
    templates = load_template_file(tfile) if os.path.isfile(tfile) else None
    src = WdsSource(shard_dir, spec=f"{spec}[{split}]", classnames=classnames)
    return EvalDataset(src, spec, classnames, templates, split)


def open_eval_dataset(spec, split: Optional[str] = None, image_root: Optional[str] = None) -> EvalDataset:
    """Open an evaluation dataset from a spec (see module doc); `split` applies to the two layouts above."""
    if isinstance(spec, EvalDataset):
        return spec
    if isinstance(spec, Source):
        return EvalDataset(spec, spec.spec, spec.classnames)
    if not isinstance(spec, str) or not spec:
        raise UsageError(f"`dataset` must be a non-empty source spec, got {spec!r}")
    path = os.path.expanduser(spec)
    if spec.startswith("karpathy:") or is_karpathy_json(path):
        path = path.split(":", 1)[1] if spec.startswith("karpathy:") else path
        if not os.path.isfile(path):
            raise ClipforgeError(f"Karpathy-split JSON {path!r} does not exist")
        src = KarpathySource(path, split=split or "test", image_root=image_root, spec=spec)
        return EvalDataset(src, spec, None, None, src.split)
    if image_root is not None:
        raise UsageError("`image_root` applies to Karpathy-split JSON datasets only")
    if is_clip_benchmark_dir(path):
        return _open_clip_benchmark(path, spec, split)
    if split is not None:
        raise UsageError(f"`split` applies to CLIP_benchmark folders and Karpathy JSON; {spec!r} is neither")
    src = open_source(spec)
    return EvalDataset(src, spec, src.classnames, None, None)
