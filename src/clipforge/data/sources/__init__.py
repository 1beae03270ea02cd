"""Readers for every collection layout; `open_source(spec)` picks one."""
from clipforge.data.sources.base import Source
from clipforge.data.sources.files import FilesSource
from clipforge.data.sources.folder import IMAGE_EXTS, ImageFolderSource
from clipforge.data.sources.manifest import ManifestSource
from clipforge.data.sources.spec import KINDS, absolute_spec, open_source
from clipforge.data.sources.wds import WdsSource

__all__ = ["Source", "FilesSource", "ImageFolderSource", "ManifestSource", "WdsSource", "open_source", "KINDS",
           "absolute_spec",
           "IMAGE_EXTS"]
