"""`open_source(spec)`: one string picks the reader.

  folder:PATH       class sub-folders -> imagefolder, otherwise a files folder (auto)
  imagefolder:PATH  ROOT/<class>/<image>
  files:PATH        images with same-stem .txt captions / .json metadata
  csv:PATH tsv:PATH jsonl:PATH parquet:PATH   manifests
  wds:PATTERN       tar shards: DIR, a.tar, path/{000..009}.tar, a.tar::b.tar
  PATH              auto-detected from what is there (folder, manifest suffix, .tar / brace pattern)
"""
from __future__ import annotations

import os
from typing import Optional

from clipforge.data.fs import is_dir
from clipforge.data.sources.base import Source
from clipforge.data.sources.files import FilesSource
from clipforge.data.sources.folder import IMAGE_EXTS, ImageFolderSource, ext_of
from clipforge.data.sources.manifest import ManifestSource, format_of
from clipforge.data.sources.trust import StoredSpec, check_commands
from clipforge.data.sources.wds import WdsSource, expand_shards
from clipforge.errors import ClipforgeError, UsageError
from clipforge.output_dirs import artifact_kind

KINDS = ("folder", "imagefolder", "files", "csv", "tsv", "jsonl", "parquet", "wds")


def split_spec(spec: str) -> tuple[str | None, str]:
    """'csv:a.csv' -> ('csv', 'a.csv'); a bare path (or a Windows drive 'C:\\...') -> (None, path)."""
    if ":" in spec:
        head, rest = spec.split(":", 1)
        if head in KINDS:
            return head, rest
        if len(head) > 1 and head.isalnum() and not rest.startswith("//"):
            raise UsageError(f"unknown source kind {head!r} in {spec!r}; valid kinds: {list(KINDS)}")
    return None, spec


def absolute_spec(spec: str) -> str:
    """The same source with its local path(s) made absolute, so it opens the same files from any working
    directory (what an index records). URLs and `pipe:` shards are left as they are. A spec read from a stored
    file stays marked as such (`clipforge.data.sources.trust`)."""
    kind, path = split_spec(spec)

    def fix(p: str) -> str:
        if "://" in p or p.startswith("pipe:") or not p:
            return p
        return os.path.abspath(os.path.expanduser(p))

    fixed = "::".join(fix(p) for p in path.split("::")) if kind in (None, "wds") else fix(path)
    out = f"{kind}:{fixed}" if kind else fixed
    return StoredSpec(out, spec.origin) if isinstance(spec, StoredSpec) else out


def looks_like_imagefolder(root: str) -> bool:
    """Images only inside first-level sub-folders and no caption files: a classification folder."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return False
    # is_dir answers False for symlink loops and other entries that cannot be stat'ed: an image-named entry
    # is an image the user put there, counted as unreadable when read, as with an explicit files: source.
    subdirs = [e for e in entries if is_dir(e) and not e.name.startswith(".")]
    top_images = [e for e in entries if ext_of(e.name) in IMAGE_EXTS and not is_dir(e)]
    if top_images or not subdirs:
        return False
    for d in subdirs[:20]:
        for dirpath, _, names in os.walk(d.path):
            if any(n.endswith((".txt", ".json")) and not n.startswith("classnames") for n in names):
                return False
    return True


# clipforge's own folders that hold no collection, named, so `index build INDEX` says what went wrong
_NOT_SOURCE_KINDS = {"checkpoint": "a model checkpoint", "adapter": "an adapter", "hf-export": "a model export",
                     "peft-adapter": "an adapter export", "onnx-graphs": "exported model graphs",
                     "curate-report": "a curation report", "demo-tour": "the demo's output folder"}


def _clipforge_folder(path: str, names: list[str]) -> Optional[str]:
    """What a clipforge folder that is not a data source holds, or None."""
    if "index.json" in names and "index.faiss" in names:
        return "an index (clipforge index build)"
    return _NOT_SOURCE_KINDS.get(artifact_kind(path) or "")


def detect_kind(path: str) -> str:
    if os.path.isdir(path):
        try:
            names = os.listdir(path)
        except OSError as e:
            raise ClipforgeError(f"cannot list folder {path!r}: {e.strerror}") from None
        what = _clipforge_folder(path, names)
        if what is not None:
            raise UsageError(f"{path!r} is {what}, not a collection of images: give the images (a folder, a "
                             "manifest or shards) as the source" + ("; `clipforge index update` adds new files "
                                                                     "of an index's own source"
                                                                     if what.startswith("an index") else ""))
        return "wds" if any(n.endswith(".tar") for n in names) else "folder"
    fmt = format_of(path)
    if fmt is not None:
        return fmt
    if path.endswith((".tar", ".tar.gz", ".tgz")) or "{" in path or "::" in path:
        return "wds"
    if not os.path.exists(path):
        raise ClipforgeError(f"source {path!r} does not exist")
    raise UsageError(f"cannot tell what kind of source {path!r} is; prefix it with one of {list(KINDS)} "
                     f"(e.g. csv:{path})")


def check_stored_source(spec) -> None:
    """Refuse now (`StoredCommandRefused`), without opening anything, a spec read from a file whose shards would
    run a command: what `open_source` would refuse, for a caller that wants to fail before it writes."""
    if not isinstance(spec, StoredSpec):
        return
    try:
        kind, path = split_spec(spec)
        path = os.path.expanduser(path)
        if (kind or detect_kind(path)) != "wds":
            return
        urls = expand_shards(path)
    except ClipforgeError:  # opening it says what is wrong, in its place
        return
    check_commands(urls, spec)


def open_source(spec: str, /, **opts) -> Source:
    """Open a collection from a spec string; `opts` go to the reader (e.g. image_col=, max_pixels=)."""
    if not isinstance(spec, str) or not spec:
        raise UsageError(f"a source spec must be a non-empty string, got {spec!r}")
    kind, path = split_spec(spec)
    path = os.path.expanduser(path)
    kind = kind or detect_kind(path)
    try:
        return _open(kind, path, spec, opts)
    except TypeError as e:
        if "unexpected keyword" not in str(e) and "multiple values for keyword" not in str(e):
            raise
        raise UsageError(f"{kind} source: {e}") from None


def _open(kind: str, path: str, spec: str, opts: dict) -> Source:
    if kind == "folder":
        if not os.path.isdir(path):
            raise ClipforgeError(f"folder {path!r} does not exist or is not a directory")
        kind = "imagefolder" if looks_like_imagefolder(path) else "files"
    if kind == "imagefolder":
        return ImageFolderSource(path, spec=spec, **opts)
    if kind == "files":
        return FilesSource(path, spec=spec, **opts)
    if kind in ("csv", "tsv", "jsonl", "parquet"):
        if not os.path.isfile(path):
            raise ClipforgeError(f"manifest {path!r} does not exist")
        return ManifestSource(path, fmt=kind, spec=spec, **opts)
    if kind == "wds":
        return WdsSource(path, spec=spec, **opts)
    raise UsageError(f"unknown source kind {kind!r}; valid kinds: {list(KINDS)}")  # pragma: no cover
