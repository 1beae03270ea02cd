"""WebDataset tar shards: `wds:DIR`, `wds:path/{000..009}.tar`, `wds:a.tar::b.tar`.

A sample is the group of consecutive tar members sharing a key (`0001.jpg`, `0001.txt`, `0001.json`,
`0001.cls`). Images: jpg/jpeg/png/webp/...; captions: each non-empty line of `.txt`, or `captions`/`caption`
in `.json`; label: `.cls` (an integer) or `label` in `.json`. The id is the `id` stored in `.json` when
present (clipforge writes the source id there, so a round trip keeps ids that contain dots), else `__key__`.

Iteration streams through the `webdataset` package. Local, uncompressed shards are also map-style: on first
`len()` / `[i]` the tar headers are scanned once (no image bytes read) into an offset index, which gives the
random access that deterministic shuffling and exact resume need.
"""
from __future__ import annotations

import os
import re
import tarfile

from clipforge.data.decode import BadSample
from clipforge.data.sample import Sample
from clipforge.data.sources.base import Source
from clipforge.data.sources.files import as_label, captions_from_meta, parse_json, split_captions
from clipforge.data.sources.folder import IMAGE_EXTS
from clipforge.errors import ClipforgeError

_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own rule for metadata members
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext


def expand_shards(pattern: str) -> list[str]:
    """`DIR` -> its *.tar files; otherwise '::'-separated brace patterns, expanded in order."""
    if os.path.isdir(pattern):
        names = sorted(n for n in os.listdir(pattern) if n.endswith((".tar", ".tar.gz", ".tgz")))
        if not names:
            raise ClipforgeError(f"folder {pattern!r} has no .tar shards")
        return [os.path.join(pattern, n) for n in names]
    from webdataset.shardlists import expand_urls

    urls = expand_urls(pattern)
    if not urls:
        raise ClipforgeError(f"shard pattern {pattern!r} names no shards")
    return urls


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def image_key(files: dict) -> str | None:
    for ext in files:
        if ext.lower() in IMAGE_EXTS or ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS:
            return ext
    return None


class WdsSource(Source):
    kind = "wds"

    def __init__(self, pattern: str, *, spec: str | None = None, classnames: list[str] | None = None, **kw):
        super().__init__(spec or f"wds:{pattern}", **kw)
        self.pattern = pattern
        self.urls = expand_shards(pattern)
        local = [u for u in self.urls if _is_local(u)]
        missing = [u for u in local if not os.path.isfile(u)]
        if missing:
            raise ClipforgeError(f"{len(missing)} of {len(self.urls)} shards do not exist, e.g. {missing[:3]}")
        self.random_access = len(local) == len(self.urls) and all(u.endswith(".tar") for u in self.urls)
        self._index: list[tuple[str, str, dict]] | None = None  # (url, key, {ext: (offset, size)})
        self._bad_shards: set[str] = set()
        self.classnames = list(classnames) if classnames else self._find_classnames()

    def _find_classnames(self) -> list[str] | None:
        if not _is_local(self.urls[0]):
            return None
        path = os.path.join(os.path.dirname(self.urls[0]), "classnames.txt")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return [ln.strip() for ln in f if ln.strip()]
        return None

    # --- sample construction shared by the streaming and the indexed path ---------------------------------
    def _make(self, key: str, url: str, files: dict[str, bytes]) -> Sample:
        meta: dict = {"__key__": key, "__url__": url}
        captions: list[str] = []
        label = None
        sid = key
        if "json" in files:
            try:
                user = parse_json(files["json"].decode("utf-8"))
            except ValueError as e:  # UnicodeDecodeError is a ValueError
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
            except ValueError:
                label = None
            if as_label(label) is None:
                label = None
                meta["meta_error"] = f"{key}.cls is not an integer label"
        ext = image_key(files)
        data = files[ext] if ext else None  # None: the record is kept and counted as no_image when read
        return Sample(id=sid, captions=captions, label=label, meta=meta, data=data, ext=ext,
                      decode_options=self.decode_options)

    # --- streaming (webdataset) -------------------------------------------------------------------------
    def __iter__(self):
        import webdataset as wds

        def handler(exn) -> bool:  # a broken shard or member: count it, keep going
            self.skipped.add(f"{self.pattern}: {str(exn)[:200]}", "bad_record")
            return True

        for url in self.urls:
            if url in self._bad_shards:
                # The index already counted this shard's broken tail: yield its readable head from the index
                # (as [i] would), so a pass and indexed access agree and nothing is counted twice.
                for entry in self._index or ():
                    if entry[0] == url:
                        try:
                            yield self._read(entry)
                        except BadSample as e:
                            self.skipped.add(entry[1], e.reason)
                continue
            ds = wds.WebDataset([url], shardshuffle=False, handler=handler, nodesplitter=None,
                                workersplitter=None, empty_check=False)
            for rec in ds:
                files = {k: v for k, v in rec.items() if not k.startswith("__") and isinstance(v, bytes)}
                yield self._make(rec["__key__"], rec.get("__url__", url), files)

    # --- map-style (local shards) -----------------------------------------------------------------------
    def _build_index(self) -> list:
        if not self.random_access:
            raise TypeError(f"{self.spec}: random access needs local uncompressed .tar shards")
        index = []
        for url in self.urls:
            try:
                file_size = os.path.getsize(url)
                with tarfile.open(url, "r:") as tf:
                    cur_key, cur = None, {}
                    for m in tf:
                        if not m.isreg() or _SKIP_META.match(m.name):
                            continue
                        match = _KEY_RE.match(m.name)
                        if not match:
                            continue
                        if m.offset_data + m.size > file_size:
                            raise tarfile.ReadError(f"member {m.name} runs past the end of the file")
                        key, ext = match.group(1), match.group(2).lower()
                        if key != cur_key:
                            if cur:
                                index.append((url, cur_key, cur))
                            cur_key, cur = key, {}
                        cur[ext] = (m.offset_data, m.size)
                    if cur:
                        index.append((url, cur_key, cur))
            except (tarfile.TarError, OSError) as e:
                # Members read before the error stay usable; the rest of the shard is one counted skip.
                self._bad_shards.add(url)
                self.open_skipped.add(f"{url}: {e}", "bad_record")
                self.skipped.add(f"{url}: {e}", "bad_record")
        return index

    def __len__(self) -> int:
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
        url, key, members = entry
        files = {}
        try:
            with open(url, "rb") as f:
                for ext, (offset, size) in members.items():
                    f.seek(offset)
                    files[ext] = f.read(size)
        except OSError as e:
            raise BadSample("unreadable", f"{url}: {e}") from None
        return self._make(key, url, files)
