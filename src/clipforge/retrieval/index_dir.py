"""The index directory: its layout (file names) and its manifest (index.json).

An index directory is an `EmbeddingStore` (img_emb/, text_emb/, metadata/, manifest.json) plus:
    index.faiss   (INDEX_FILE) the VectorIndex over the live image embeddings (collection ids), or a
                  sharded-index manifest naming shard files
    index.json    (INFO_FILE) the build job's manifest: source, model, precision, counts, skipped files by
                  reason, the index kind chosen and its measured recall@10

Writers (`build`, `delete`, the CLI's merge) and readers (`searcher`, `rerank`, the eval tasks, the HTTP
service) name these files through this module only.

    d = IndexDir("idx")
    d.read_info()["model"], d.index_path, d.signature()
"""

from __future__ import annotations

import os
from pathlib import Path

from clipforge.atomic import atomic_write_json
from clipforge.data.sources.trust import stored_spec
from clipforge.errors import ClipforgeError
from clipforge.json_file import read_json_file
from clipforge.retrieval.store_files import MANIFEST_FILE

__all__ = ["IndexDir", "INFO_FILE", "INDEX_FILE", "WATCHED", "read_info", "is_index_dir"]

INFO_FILE, INDEX_FILE = "index.json", "index.faiss"
# every one is replaced atomically by each commit (a new inode each time): what a reader watches
WATCHED = (MANIFEST_FILE, INFO_FILE, INDEX_FILE)


class IndexDir:
    """The files of one index directory (the directory need not exist yet)."""

    def __init__(self, root):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __repr__(self) -> str:
        return f"IndexDir({str(self.root)!r})"

    @property
    def info_path(self) -> Path:
        return self.root / INFO_FILE

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    @property
    def manifest_path(self) -> Path:
        """The embedding store's manifest (the store's commit point)."""
        return self.root / MANIFEST_FILE

    def is_index(self) -> bool:
        """Whether this is a directory written by `clipforge index build` (index.json and a store manifest)."""
        return self.root.is_dir() and self.info_path.is_file() and self.manifest_path.is_file()

    def is_own_output(self) -> bool:
        """An index (or embedding store) folder, or one a killed build left with only its hidden lock/temp files:
        what a build may write into."""
        return self.info_path.is_file() or self.manifest_path.is_file() or all(
            n.startswith(".") for n in os.listdir(self.root))

    def read_info(self) -> dict:
        """index.json; missing or unreadable is a one-line `ClipforgeError`. Its `source` is marked as read from
        a file (`clipforge.data.sources.trust`): a `pipe:` command in it is not run unasked."""
        p = self.info_path
        if not p.exists():
            raise ClipforgeError(f"{self.root}: no {INFO_FILE}; build it with `clipforge index build`")
        try:
            info = read_json_file(p)
        except ClipforgeError as e:
            raise ClipforgeError(f"cannot read the index manifest: {e}") from None
        if not isinstance(info, dict):
            raise ClipforgeError(f"{p}: not a clipforge index manifest (not a JSON object)")
        if "source" in info:  # the file's word, not the user's: a `pipe:` command in it is not run unasked
            info["source"] = stored_spec(info["source"], p)
        return info

    def write_info(self, info: dict) -> None:
        """Replace index.json atomically."""
        atomic_write_json(self.info_path, info)

    def signature(self, names=WATCHED) -> tuple:
        """What changes when any writer commits here: (inode, mtime, size) of each of `names` (by default the
        store manifest, index.json and index.faiss; None for a missing one)."""
        out = []
        for name in names:
            try:
                st = os.stat(self.root / name)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)


def read_info(index_dir) -> dict:
    """`IndexDir(index_dir).read_info()`: the directory's index.json."""
    return IndexDir(index_dir).read_info()


def is_index_dir(path) -> bool:
    """`IndexDir(path).is_index()`: a directory written by `clipforge index build`."""
    return IndexDir(path).is_index()
