"""A plain folder of images with optional same-stem `.txt` captions and `.json` metadata.

This is the layout clip-retrieval and img2dataset's "files" output use: `a/b/0001.jpg`, `a/b/0001.txt`,
`a/b/0001.json`. Each non-empty line of the `.txt` is one caption. A `.json` may also carry `caption` /
`captions` and `label`; its other keys go to `Sample.meta`. Sidecars over `MAX_SIDECAR_BYTES` are not read
(noted in `meta_error`); each caption is cut to `max_caption_bytes` (noted as `caption_truncated`).
"""
from __future__ import annotations

import json
import os

from clipforge.json_file import describe_json_error
from clipforge.data.fs import FileRefused, is_file, read_text
from clipforge.data.sample import Sample, file_meta
from clipforge.data.sources.base import Source
from clipforge.data.sources.folder import ext_of, walk_images
from clipforge.errors import ClipforgeError

MAX_SIDECAR_BYTES = 4 * 2**20  # a caption / metadata file larger than this is not one: noted, not read



def split_captions(text: str) -> list[str]:
    """One caption per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_json(text: str | bytes):
    """json.loads that raises only ValueError, with a message about the input: nesting too deep for the parser
    (RecursionError), a number with more digits than Python converts, or bytes that are not UTF-8 are a bad
    file like any other."""
    if isinstance(text, (bytes, bytearray)):
        try:  # decoded here: json.loads would guess UTF-16/32 from the first bytes
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(describe_json_error(e)) from None
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as e:
        raise ValueError(describe_json_error(e)) from None


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
        # Absolute, so the paths recorded for each sample (an index's thumbnails, a manifest written from
        # this source) still name the files when read from another working directory.
        self.root = os.path.abspath(root)
        self.items = walk_images(self.root)
        labels_path = os.path.join(self.root, "classnames.txt")
        if is_file(labels_path):
            try:
                text = read_text(labels_path, MAX_SIDECAR_BYTES, "classnames.txt")
            except FileRefused as e:
                raise ClipforgeError(f"cannot read class names: {e.detail}") from None
            self.classnames = [ln.strip() for ln in text.splitlines() if ln.strip()]

    def __len__(self) -> int:
        return len(self.items)

    def _get(self, index: int) -> Sample:
        rel = self.items[index]
        path = os.path.join(self.root, rel)
        stem, rel_stem = os.path.splitext(path)[0], os.path.splitext(rel)[0]
        meta = file_meta(path)
        captions: list[str] = []
        label = None
        # Sidecars are optional: a bad one is noted in meta_error (named relative to the root, so an index
        # served to others does not show server paths) and the image is kept.
        if is_file(stem + ".json"):
            try:
                user = parse_json(read_text(stem + ".json", MAX_SIDECAR_BYTES, rel_stem + ".json"))
                if isinstance(user, dict):
                    captions = captions_from_meta(user)
                    label = as_label(user.get("label"))
                    meta.update({k: v for k, v in user.items() if k not in ("caption", "captions", "label")})
            except FileRefused as e:
                meta["meta_error"] = e.detail
            except ValueError as e:
                meta["meta_error"] = f"{rel_stem}.json: {e}"
        if is_file(stem + ".txt"):
            try:
                captions = split_captions(read_text(stem + ".txt", MAX_SIDECAR_BYTES, rel_stem + ".txt")) + \
                    [c for c in captions if c]
            except FileRefused as e:
                meta["meta_error"] = e.detail
        captions = list(dict.fromkeys(self._cap_captions(rel, captions)))  # .txt and .json often agree
        return Sample(id=rel, captions=captions, label=label, meta=meta, path=path, ext=ext_of(rel),
                      decode_options=self.decode_options)


def as_label(value) -> int | None:
    """An integer class label from metadata, or None (missing, not an integer, or beyond int64 — a label
    that large is not a class index, and would overflow every tensor it reaches)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        label = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        return None
    return label if -2**63 <= label < 2**63 else None
