"""Explicit image files as a source, and `open_inputs`: what a user named on a command line (image files, or
one source spec) as one `Source`."""
from __future__ import annotations

import os
from typing import Sequence

from clipforge.data.sample import Sample, file_meta
from clipforge.data.sources.base import Source
from clipforge.data.sources.manifest import format_of
from clipforge.data.sources.spec import KINDS, open_source
from clipforge.errors import UsageError

__all__ = ["FileListSource", "open_inputs"]


class FileListSource(Source):
    """Explicit image files, in the order given; the id is the path as given."""

    kind = "files-list"

    def __init__(self, paths: Sequence[str], **kw):
        super().__init__(f"files-list:{len(paths)}", **kw)
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def _get(self, index: int) -> Sample:
        p = self.paths[index]
        return Sample(id=p, path=p, meta=file_meta(p), decode_options=self.decode_options)


def _looks_like_source(arg: str) -> bool:
    head = arg.split(":", 1)[0]
    return (head in KINDS and ":" in arg) or os.path.isdir(arg) or format_of(arg) is not None \
        or arg.endswith((".tar", ".tar.gz", ".tgz")) or "{" in arg or "::" in arg


def open_inputs(inputs) -> Source:
    """A Source from what the user named: one source spec (folder, manifest, shards) or image files."""
    if isinstance(inputs, Source):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(x) for x in inputs]
    if not inputs:
        raise UsageError("no images given: name image files or one source (folder, manifest, shards)")
    sources = [x for x in inputs if _looks_like_source(x)]
    if sources:
        if len(inputs) > 1:
            raise UsageError(f"give either image files or exactly one source, not both/several "
                             f"(sources among the inputs: {sources[:3]})")
        return open_source(sources[0])
    return FileListSource(inputs)
