"""A plain folder of images with optional same-stem `.txt` captions and `.json` metadata.

This is the layout clip-retrieval and img2dataset's "files" output use: `a/b/0001.jpg`, `a/b/0001.txt`,
`a/b/0001.json`. Each non-empty line of the `.txt` is one caption. A `.json` may also carry `caption` /
`captions` and `label`; its other keys go to `Sample.meta`.
"""
from __future__ import annotations

import json
import os

from clipforge.data.sample import Sample, file_meta
from clipforge.data.sources.base import Source
from clipforge.data.sources.folder import ext_of, walk_images
from clipforge.errors import ClipforgeError


def split_captions(text: str) -> list[str]:
    """One caption per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def captions_from_meta(meta: dict) -> list[str]:
    caps = meta.get("captions", meta.get("caption"))
    if caps is None:
        return []
    if isinstance(caps, str):
        return [caps] if caps.strip() else []
    if isinstance(caps, (list, tuple)):
        return [str(c) for c in caps if str(c).strip()]
    return [str(caps)]


class FilesSource(Source):
    kind = "files"

    def __init__(self, root: str, *, spec: str | None = None, **kw):
        super().__init__(spec or f"files:{root}", **kw)
        if not os.path.isdir(root):
            raise ClipforgeError(f"folder {root!r} does not exist or is not a directory")
        self.root = root
        self.items = walk_images(root)
        labels_path = os.path.join(root, "classnames.txt")
        if os.path.isfile(labels_path):
            with open(labels_path, encoding="utf-8") as f:
                self.classnames = [ln.strip() for ln in f if ln.strip()]

    def __len__(self) -> int:
        return len(self.items)

    def _get(self, index: int) -> Sample:
        rel = self.items[index]
        path = os.path.join(self.root, rel)
        stem = os.path.splitext(path)[0]
        meta = file_meta(path)
        captions: list[str] = []
        label = None
        if os.path.isfile(stem + ".json"):
            try:
                with open(stem + ".json", encoding="utf-8") as f:
                    user = json.load(f)
                if isinstance(user, dict):
                    captions = captions_from_meta(user)
                    label = _as_label(user.get("label"))
                    meta.update({k: v for k, v in user.items() if k not in ("caption", "captions", "label")})
            except (OSError, ValueError, UnicodeDecodeError) as e:
                meta["meta_error"] = f"{stem}.json: {e}"  # metadata is optional: note it, keep the image
        if os.path.isfile(stem + ".txt"):
            try:
                with open(stem + ".txt", encoding="utf-8", errors="replace") as f:
                    captions = split_captions(f.read()) + [c for c in captions if c]
            except OSError as e:
                meta["meta_error"] = f"{stem}.txt: {e}"
            captions = list(dict.fromkeys(captions))  # .txt and .json often repeat the same caption
        return Sample(id=rel, captions=captions, label=label, meta=meta, path=path, ext=ext_of(rel),
                      decode_options=self.decode_options)


def _as_label(value) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
