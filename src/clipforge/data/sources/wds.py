"""WebDataset tar shards: `wds:DIR`, `wds:path/{000..009}.tar`, `wds:a.tar::b.tar`.

A sample is the group of consecutive tar members sharing a key (`0001.jpg`, `0001.txt`, `0001.json`,
`0001.cls`). Images: jpg/jpeg/png/webp/...; captions: each non-empty line of `.txt`, or `captions`/`caption`
in `.json`; label: `.cls` (an integer) or `label` in `.json`. The id is the `id` stored in `.json` when
present (clipforge writes the source id there, so a round trip keeps ids that contain dots), else `__key__`.

Local, uncompressed shards are map-style: on first `len()` / `[i]` the tar headers are scanned once (no member
data read) into an offset index, which gives the random access that deterministic shuffling and exact resume
need; a sample's image is read from its shard only when it is decoded. Compressed (gzip, bzip2, xz) and remote
shards are read in order only: `len()` and `[i]` raise `StreamingOnly`, a one-line `UsageError`. What a shard
holds that cannot be a sample (below) is counted when the index is built (`open_skipped`; such samples are no
positions of the index) or, read in order, during the pass (`skipped`): the same counts either way.

Every shard is read as untrusted bytes, with memory bounded whatever its headers claim:

- Only the members a reader uses are read — the first image of a sample, `.txt`, `.json`, `.cls` — each
  checked against a cap from its header before a byte of it is read: `max_image_bytes` (the files reader's
  per-file cap, `clipforge.data.fs.DEFAULT_MAX_FILE_BYTES`) and `max_text_bytes` (the files reader's sidecar
  cap). A sample with a member over its cap is skipped as `member_too_large`. Other members (`.npy`, a second
  image) are never read, so they cannot spoil a sample; in a compressed shard they are decompressed and
  dropped a block at a time. Captions are then cut to `max_caption_bytes` (`caption_truncated` in `notes`).
- Non-regular members — symlinks, hard links, devices, FIFOs, sparse files and members of unknown type — are
  never followed or read: each one is counted as `not_a_file`, named by its member name (a count of members,
  not of samples); the regular members of its sample are still read. Directory entries are passed over.
- A shard that ends early — inside a header, inside a member's data, before its end-of-archive blocks, or in
  a compressed stream that stops before its end — yields every whole sample before the cut and counts
  `shard_truncated` once for the shard; one that is damaged (a bad header checksum, corrupt compressed data)
  counts `bad_record` once the same way, and one that cannot be read (an I/O error, a failed `pipe:` command)
  `unreadable`. After a compressed tar's end its stream is read on to the codec's checksum (up to
  `tar_bytes.VERIFY_BYTES`), so corruption before the end blocks is found too. A member name repeated within a
  sample is counted as `bad_record` (webdataset's rule) and not read. No read of tar metadata (a pax or GNU
  long-name header) may exceed `tar_bytes.MAX_HEADER_BYTES`.

The tar stream is `tar_bytes`, the grouping of members into samples `tar_walk`, the shard list `shards`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

from clipforge.data.captions import check_byte_cap
from clipforge.data.decode import BadSample, SkipCounter
from clipforge.data.fs import DEFAULT_MAX_FILE_BYTES, FileRefused, is_file, read_text
from clipforge.data.sample import Sample
from clipforge.data.sources.base import Source, StreamingOnly
from clipforge.data.sources.files import MAX_SIDECAR_BYTES, as_label, captions_from_meta, parse_json, split_captions
from clipforge.data.sources.folder import IMAGE_EXTS
from clipforge.data.sources.shards import expand_shards, is_local, open_remote
from clipforge.data.sources.tar_bytes import Cut
from clipforge.data.sources.tar_walk import Refused, walk
from clipforge.data.sources.trust import check_commands, is_stored
from clipforge.errors import ClipforgeError

TEXT_EXTS = ("txt", "json", "cls")


def _is_image_ext(ext: str) -> bool:
    return ext.lower() in IMAGE_EXTS or ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS


def image_key(files: dict) -> str | None:
    for ext in files:
        if _is_image_ext(ext):
            return ext
    return None


@dataclass
class WdsSample(Sample):
    """A sample of an indexed shard: its image stays in the shard until asked for."""

    member: tuple[str, int, int] | None = field(default=None, repr=False)  # (shard path, offset, size)

    def image_bytes(self) -> bytes:
        if self.data is not None or self.member is None:
            return super().image_bytes()
        url, offset, size = self.member
        try:
            with open(url, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError as e:
            raise BadSample("unreadable", f"{url}: {e.strerror or e}") from None
        if len(data) != size:
            raise BadSample("unreadable", f"{url}: the shard is shorter than when it was indexed")
        return data


class WdsSource(Source):
    """`max_image_bytes` / `max_text_bytes`: the most one image / one `.txt`, `.json` or `.cls` member may
    hold; a sample with a larger one is skipped as `member_too_large` without it being read."""

    kind = "wds"

    def __init__(self, pattern: str, *, spec: str | None = None, classnames: list[str] | None = None,
                 max_image_bytes: int = DEFAULT_MAX_FILE_BYTES, max_text_bytes: int = MAX_SIDECAR_BYTES, **kw):
        super().__init__(spec or f"wds:{pattern}", **kw)
        self.max_image_bytes = check_byte_cap(max_image_bytes, "max_image_bytes", allow_none=False)
        self.max_text_bytes = check_byte_cap(max_text_bytes, "max_text_bytes", allow_none=False)
        self.pattern = pattern
        self.urls = expand_shards(pattern)
        # a `pipe:` shard runs a shell command: refused (before any shard is read) when the spec was read from a
        # stored file and the user did not accept it (clipforge.data.sources.trust)
        check_commands(self.urls, spec, pattern)
        self._stored = next((s for s in (spec, pattern) if is_stored(s)), None)
        local = [u for u in self.urls if is_local(u)]
        missing = [u for u in local if not is_file(u)]
        if missing:
            raise ClipforgeError(f"{len(missing)} of {len(self.urls)} shards do not exist or are not files, "
                                 f"e.g. {missing[:3]}")
        self.random_access = len(local) == len(self.urls) and all(u.endswith(".tar") for u in self.urls)
        self._index: list[tuple[str, str, dict]] | None = None  # (url, key, {ext: (offset, size)})
        self.classnames = list(classnames) if classnames else self._find_classnames()

    def _find_classnames(self) -> list[str] | None:
        if not is_local(self.urls[0]):
            return None
        path = os.path.join(os.path.dirname(self.urls[0]), "classnames.txt")
        if not is_file(path):
            return None
        try:
            text = read_text(path, MAX_SIDECAR_BYTES, "classnames.txt")
        except FileRefused as e:
            raise ClipforgeError(f"cannot read class names: {e.detail}") from None
        return [ln.strip() for ln in text.splitlines() if ln.strip()]

    def _cap(self, ext: str, group: dict) -> int | None:
        """The byte cap of a member this reader uses, None for one it never reads."""
        if ext in TEXT_EXTS:
            return self.max_text_bytes
        if _is_image_ext(ext) and image_key(group) is None:  # the sample's first image
            return self.max_image_bytes
        return None

    def _refused(self, key: str, group: dict, counter: SkipCounter) -> bool:
        if any(isinstance(v, Refused) for v in group.values()):
            counter.add(key, "member_too_large")
            return True
        return False

    # --- sample construction shared by the streaming and the indexed path ---------------------------------
    def _make(self, key: str, url: str, files: dict[str, bytes], image: tuple | None = None) -> Sample:
        meta: dict = {"__key__": key, "__url__": url}
        captions: list[str] = []
        label = None
        sid = key
        if "json" in files:
            try:
                user = parse_json(files["json"])
            except ValueError as e:
                meta["meta_error"] = f"{key}.json: {e}"
                user = None
            if isinstance(user, dict):
                captions = captions_from_meta(user)
                if isinstance(user.get("id"), str) and user["id"]:
                    sid = user["id"]
                if isinstance(user.get("label"), int):
                    label = as_label(user["label"])
                meta.update({k: v for k, v in user.items() if k not in ("caption", "captions", "label", "id")})
        if "txt" in files and not captions:
            captions = split_captions(files["txt"].decode("utf-8", errors="replace"))
        if "cls" in files:
            try:
                label = int(files["cls"].decode("utf-8").strip())
            except ValueError:  # not digits, not UTF-8, or more digits than Python converts
                label = None
            if as_label(label) is None:
                label = None
                meta["meta_error"] = f"{key}.cls is not an integer label"
        captions = self._cap_captions(sid, captions)
        ext = image_key(files) if image is None else image[0]
        data = files.get(ext) if ext and image is None else None
        # no image: the record is kept and counted as no_image when read
        return WdsSample(id=sid, captions=captions, label=label, meta=meta, data=data, ext=ext,
                         decode_options=self.decode_options, member=None if image is None else image[1])

    # --- reading in order -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Sample]:
        if self.random_access:  # through the index, so a pass and indexed access agree
            len(self)
            for entry in self._index:
                try:
                    yield self._read(entry)
                except BadSample as e:
                    self.skipped.add(entry[1], e.reason)
            return
        for url in self.urls:
            yield from self._stream(url)

    def _stream(self, url: str) -> Iterator[Sample]:
        """The samples of one shard read in order (compressed or remote); what is wrong goes to `skipped`."""
        try:
            raw = open(url, "rb") if is_local(url) else open_remote(url, self._stored)
        except OSError as e:
            self.skipped.add(f"{url}: {e.strerror or e}", "unreadable")
            return
        try:
            groups = walk(raw, lambda stream, m: stream.data(m.offset_data, m.size, m.name), self._cap, url,
                           self.skipped)
            for key, files in groups:
                if not self._refused(key, files, self.skipped):
                    yield self._make(key, url, files)
        finally:
            try:
                raw.close()
            except OSError as e:  # a `pipe:` command that failed says so when closed (unless its read did)
                if not (self.skipped.samples and self.skipped.samples[-1][0].startswith(f"{url}: ")):
                    self.skipped.add(f"{url}: {e.strerror or e}", "unreadable")

    # --- map-style (local shards) -----------------------------------------------------------------------
    def _build_index(self) -> list:
        found = SkipCounter()
        index = []
        for url in self.urls:
            try:
                raw = open(url, "rb")
            except OSError as e:
                found.add(f"{url}: {e.strerror or e}", "unreadable")
                continue
            with raw:
                size = os.fstat(raw.fileno()).st_size

                def where(stream, m, size=size):  # checked from the header, nothing read
                    if m.offset_data + m.size > size:
                        raise Cut(f"the shard ends inside {m.name}, at byte {size}")
                    return m.offset_data, m.size

                for key, group in walk(raw, where, self._cap, url, found, allow_compressed=False):
                    if not self._refused(key, group, found):
                        index.append((url, key, group))
        self.open_skipped.merge(found)
        self.skipped.merge(found)
        return index

    def __len__(self) -> int:
        if not self.random_access:
            raise StreamingOnly(f"{self.spec}: compressed or remote shards can only be read in order; random "
                                "access (training, shuffling, indexed reads) needs local uncompressed .tar "
                                "shards: decompress them (gunzip) or write them again with `data convert`")
        if self._index is None:
            self._index = self._build_index()
        return len(self._index)

    def _get(self, index: int) -> Sample:
        return self._read(self._index[index])

    def locate(self, positions) -> list[tuple[str | None, list[int], list[int]]]:
        """Positions grouped by tar shard, each as `wds:SHARD` and the positions within it (a shard's index
        is the same read alone or with the others), so a worker scans the headers of its shards only."""
        if not self.random_access or len(self.urls) == 1:
            return super().locate(positions)
        len(self)  # the index
        first: dict[str, int] = {}
        for i, (url, _, _) in enumerate(self._index):
            first.setdefault(url, i)
        groups: dict[str, tuple[list[int], list[int]]] = {}
        for p in positions:
            url = self._index[int(p)][0]
            g = groups.setdefault(url, ([], []))
            g[0].append(int(p))
            g[1].append(int(p) - first[url])
        return [(f"wds:{url}", glob, loc) for url, (glob, loc) in groups.items()]

    def _read(self, entry) -> Sample:
        """An indexed sample: its text members read now (each under `max_text_bytes`), its image later."""
        url, key, members = entry
        image = image_key(members)
        files = {}
        try:
            with open(url, "rb") as f:
                for ext, (offset, size) in members.items():
                    if ext == image:
                        continue
                    f.seek(offset)
                    files[ext] = f.read(size)
        except OSError as e:
            raise BadSample("unreadable", f"{url}: {e.strerror or e}") from None
        return self._make(key, url, files, image=(image, (url, *members[image])) if image else None)
