"""`Sample`: one record of a collection — a stable id, a lazily decoded image, captions and/or a label."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from PIL import Image

from clipforge.data.decode import BadSample, DecodeOptions, decode_image, read_bytes


def text_safe(text: str) -> str:
    """`text` as valid Unicode: characters UTF-8 cannot encode — lone surrogates from JSON escapes, and the
    undecodable bytes of non-UTF-8 file names (Python's surrogateescape) — become backslash escapes such as
    \\udce9. Valid text is returned unchanged. Ids, captions and recorded paths pass through this, since
    Arrow, JSON writers, tokenizers and terminals all require valid text."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Sample:
    """One image with its text and/or label.

    `id` is stable across runs and readers: the relative path for folders, the row key (or image path) for
    manifests, the `__key__` (or the id stored in its `.json`) for webdataset shards.
    The image is decoded only when `.image` is read; a bad file raises `BadSample(reason)` then.
    """

    id: str
    captions: list[str] = field(default_factory=list)
    label: int | None = None
    meta: dict = field(default_factory=dict)
    path: str | None = None                       # a local file to read the bytes from, or
    data: bytes | None = field(default=None, repr=False)  # the bytes themselves (tar members)
    ext: str | None = None                        # "jpg", "png", ... (lower case, no dot) when known
    decode_options: DecodeOptions = field(default_factory=DecodeOptions, repr=False)
    _image: Image.Image | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        # `path` stays as the OS gave it (it must open the file); what is shown or stored is valid text.
        if isinstance(self.id, str):
            self.id = text_safe(self.id)
        self.captions = [text_safe(c) if isinstance(c, str) else c for c in self.captions]

    def image_bytes(self) -> bytes:
        """The encoded image exactly as stored (raises `BadSample` when missing or unreadable)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise BadSample("no_image", f"sample {self.id!r} has no image")
        return read_bytes(self.path)

    def load_image(self) -> Image.Image:
        """Decode now (cached on the sample): RGB, EXIF orientation applied, or raise `BadSample`."""
        if self._image is None:
            self._image = decode_image(self.image_bytes(), self.decode_options)
        return self._image

    @property
    def image(self) -> Image.Image:
        return self.load_image()

    def drop_image(self) -> None:
        """Forget the decoded pixels (keeps memory flat when samples are held in a list)."""
        self._image = None


def file_meta(path: str) -> dict:
    """path, size and mtime of a local file (empty for the stat fields when it cannot be stat'ed)."""
    try:
        st = os.stat(path)
        return {"path": text_safe(path), "size": st.st_size, "mtime": st.st_mtime}
    except (OSError, ValueError):  # vanished, a symlink loop, a NUL byte in the name
        return {"path": text_safe(path)}
