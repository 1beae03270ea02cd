"""Image folders for classification: `ROOT/<class>/.../<image>`, one sub-folder per class.

Labels follow the sorted folder names (torchvision's ImageFolder convention), so label i is the i-th folder.
Human-readable class names can replace the folder names: `classnames.json` in ROOT ({folder: name} or a list
in folder order) or `classnames.txt` (one name per line, in sorted folder order).
"""
from __future__ import annotations

import json
import os

from clipforge.data.fs import FileRefused, read_text
from clipforge.data.sample import Sample, file_meta
from clipforge.data.sources.base import Source
from clipforge.errors import ClipforgeError, UsageError

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm"}
MAX_CLASSNAMES_BYTES = 4 * 2**20  # as for every sidecar (files.MAX_SIDECAR_BYTES)


def ext_of(name: str) -> str:
    return os.path.splitext(name)[1].lower().lstrip(".")


def walk_images(root: str) -> list[str]:
    """Relative POSIX paths of image-extension files under root, sorted; hidden entries skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith(".") or ext_of(name) not in IMAGE_EXTS:
                continue
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def read_classnames(path: str, folders: list[str]) -> list[str]:
    """Class names for the sorted `folders`, from a .json ({folder: name} or list) or .txt (one per line)."""
    try:  # a regular file of a bounded size: never a FIFO, a device or a huge file read whole
        text = read_text(path, MAX_CLASSNAMES_BYTES, path)
    except FileRefused as e:
        raise ClipforgeError(f"cannot read class names file: {e.detail}") from None
    if path.endswith(".json"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ClipforgeError(f"{path} is not valid JSON: {e}") from None
        if isinstance(obj, dict):
            missing = [f for f in folders if f not in obj]
            if missing:
                raise UsageError(f"{path} has no name for folders {missing[:5]}; it names {sorted(obj)[:10]}")
            return [str(obj[f]) for f in folders]
        names = [str(x) for x in obj]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != len(folders):
        raise UsageError(f"{path} lists {len(names)} class names but {len(folders)} class folders exist "
                         f"({folders[:10]}{'...' if len(folders) > 10 else ''})")
    return names


class ImageFolderSource(Source):
    kind = "imagefolder"

    def __init__(self, root: str, *, classnames: str | list[str] | None = None, spec: str | None = None, **kw):
        super().__init__(spec or f"imagefolder:{root}", **kw)
        if not os.path.isdir(root):
            raise ClipforgeError(f"image folder {root!r} does not exist or is not a directory")
        self.root = os.path.abspath(root)  # recorded paths must not depend on the working directory
        rels = walk_images(self.root)
        self.folders = sorted({r.split("/", 1)[0] for r in rels if "/" in r})
        if not self.folders:
            raise ClipforgeError(f"{root!r} has no class sub-folders with images (expected ROOT/<class>/<image>)")
        loose = [r for r in rels if "/" not in r]
        for r in loose:  # images directly under ROOT have no class: report, don't guess
            self.open_skipped.add(r, "bad_record")
        self.skipped = self.open_skipped.copy()
        index = {f: i for i, f in enumerate(self.folders)}
        self.items = [(r, index[r.split("/", 1)[0]]) for r in rels if "/" in r]
        self.classnames = self._classnames(classnames)

    def _classnames(self, classnames) -> list[str]:
        if isinstance(classnames, (list, tuple)):
            if len(classnames) != len(self.folders):
                raise UsageError(f"got {len(classnames)} class names for {len(self.folders)} class folders")
            return [str(c) for c in classnames]
        if isinstance(classnames, str):
            return read_classnames(classnames, self.folders)
        for name in ("classnames.json", "classnames.txt"):
            path = os.path.join(self.root, name)
            if os.path.isfile(path):
                return read_classnames(path, self.folders)
        return list(self.folders)

    def __len__(self) -> int:
        return len(self.items)

    def _get(self, index: int) -> Sample:
        rel, label = self.items[index]
        path = os.path.join(self.root, rel)
        meta = file_meta(path)
        meta["class_folder"] = self.folders[label]
        return Sample(id=rel, label=label, meta=meta, path=path, ext=ext_of(rel),
                      decode_options=self.decode_options)
