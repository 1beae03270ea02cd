"""A curated view of a source and how it is written: the kept samples (with the captions they keep), as a new
manifest or webdataset shards, plus the removals file.

`Selection` is a `Source` over the kept positions of another source, with each kept sample's surviving
captions; `write_selection` hands it to the data layer's writers (`clipforge.data.write`), so the output is
an ordinary source for `train`, `index build` and every other command. Manifests reference the images where
they are (paths relative to the manifest); shards copy the stored bytes.

The removals file is JSONL, one line per sample that lost anything, in source order:

  {"id": ..., "removed": "sample" | "captions", "reasons": [...], "score": best pair score or null,
   "captions": [{"index": i, "text": ..., "score": s, "reasons": [...]}, ...],   # the captions removed
   "duplicate_of": id, "similarity": s}                                        # de-duplication only

"sample" lines name samples left out entirely; "captions" lines name samples kept with fewer captions.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Optional

from clipforge.atomic import atomic_write, atomic_write_json
from clipforge.data.sources.base import Source
from clipforge.data.write import FORMATS, convert
from clipforge.errors import ClipforgeError, UsageError
from clipforge.json_file import read_json_file
from clipforge.output_dirs import OutputFile

__all__ = ["Selection", "write_selection", "output_paths", "vet_selection_output", "read_removals",
           "merge_removals"]


class Selection(Source):
    """`base` restricted to `positions` (in order); `captions[pos]` replaces that sample's captions."""

    kind = "selection"

    def __init__(self, base: Source, positions: list[int], captions: Optional[dict[int, list[str]]] = None):
        super().__init__(f"selection of {base.spec}", decode=base.decode_options)
        self.base, self.positions, self.overrides = base, list(positions), dict(captions or {})
        self.random_access = getattr(base, "random_access", True)
        self.classnames = base.classnames

    def __len__(self) -> int:
        return len(self.positions)

    def _fix(self, pos: int, sample):
        if pos in self.overrides:
            sample.captions = list(self.overrides[pos])
        return sample

    def _get(self, index: int):
        pos = self.positions[index]
        return self._fix(pos, self.base[pos])

    def __iter__(self) -> Iterator:
        if self.random_access:
            yield from (self._get(i) for i in range(len(self)))
            return
        keep = set(self.positions)
        for pos, sample in enumerate(self.base):  # a streaming source: one pass, kept positions only
            if pos in keep:
                yield self._fix(pos, sample)


def output_paths(out, to: Optional[str] = None) -> dict:
    """Where a curated output goes: the data (`out`: a manifest file, or a folder of shards for "wds"), its
    removals file and its summary (beside a manifest as <stem>.removals.jsonl / <stem>.summary.json, inside a
    shard folder as removals.jsonl / summary.json)."""
    out = Path(out)
    fmt = to or out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise UsageError(f"`out` {str(out)!r}: give a .jsonl / .csv / .parquet manifest, or a folder with "
                         f"`to`='wds' (formats: {list(FORMATS)})")
    if fmt == "wds":
        return {"format": fmt, "data": out, "removals": out / "removals.jsonl", "summary": out / "summary.json"}
    stem = out.with_suffix("")
    return {"format": fmt, "data": out, "removals": Path(f"{stem}.removals.jsonl"),
            "summary": Path(f"{stem}.summary.json")}


def _earlier_selection(paths: dict):
    """`owned` for a curated output's files: its summary file is a curation summary naming this output."""
    def owned(_path) -> bool:
        try:
            info = read_json_file(paths["summary"], max_bytes=16 << 20)
        except ClipforgeError:
            return False
        return (isinstance(info, dict) and "removals_file" in info and isinstance(info.get("out"), str)
                and os.path.abspath(info["out"]) == os.path.abspath(paths["data"]))
    return owned


def vet_selection_output(out, to: Optional[str] = None, *, overwrite: bool = False) -> tuple[dict, OutputFile]:
    """Check every file a curation step would write at `out` before it does any work: a step's earlier output
    is replaced; other files only with `overwrite`; a folder, link, device or FIFO never (`output_dirs`).
    Returns (output_paths, the file policy)."""
    paths = output_paths(out, to)
    output = OutputFile(overwrite=overwrite, param="out", owned=_earlier_selection(paths))
    names = ("removals", "summary") if paths["format"] == "wds" else ("data", "removals", "summary")
    for name in names:
        if paths["format"] != "wds" or os.path.isdir(paths["data"]):
            output.vet(paths[name])
    return paths, output


def write_selection(source: Source, positions: list[int], captions: dict[int, list[str]], removals: list[dict],
                    out, *, to: Optional[str] = None, summary: Optional[dict] = None, shard_size: int = 1000,
                    verify: bool = False, progress=None, overwrite: bool = False) -> dict:
    """Write the kept samples, the removals file and the summary; return the summary with the paths.
    What may be replaced: `vet_selection_output`."""
    paths, output = vet_selection_output(out, to, overwrite=overwrite)
    if paths["format"] != "wds":
        paths["data"].parent.mkdir(parents=True, exist_ok=True)
    written = convert(Selection(source, positions, captions), paths["format"], str(paths["data"]),
                      shard_size=shard_size, verify=verify, progress=progress, overwrite=overwrite,
                      owned=output.owned)
    atomic_write(paths["removals"], lambda f: f.writelines(
        (json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8") for r in removals), output=output)
    summary = {**(summary or {}), "out": str(paths["data"]), "format": paths["format"],
               "removals_file": str(paths["removals"]), "written": written["written"],
               "write_skipped": written["skipped"]}
    atomic_write_json(paths["summary"], summary, output=output)
    return {**summary, "summary_file": str(paths["summary"])}


def read_removals(path) -> list[dict]:
    """The lines of a removals file."""
    if not os.path.isfile(path):
        raise UsageError(f"removals file {str(path)!r} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path} line {n} is not JSON: {e}") from None
    return out


def merge_removals(*lists: list[dict]) -> dict[str, dict]:
    """id -> one removal record combining every list's. A whole-sample removal wins over caption removals:
    the merged record is then "sample" with the reasons of the whole-sample removals only (captions removed
    by per-pair rules stay listed under "captions" with their own reasons)."""
    merged: dict[str, dict] = {}
    for records in lists:
        for r in records:
            cur = merged.get(r["id"])
            if cur is None:
                merged[r["id"]] = {**r, "reasons": list(r.get("reasons", [])), "captions": list(r.get("captions", []))}
                continue
            if r.get("removed") == "sample":
                if cur.get("removed") != "sample":
                    cur["removed"], cur["reasons"] = "sample", []
                cur["reasons"] += [x for x in r.get("reasons", []) if x not in cur["reasons"]]
            elif cur.get("removed") != "sample":
                cur["reasons"] += [x for x in r.get("reasons", []) if x not in cur["reasons"]]
            seen = {c["index"] for c in cur["captions"]}
            cur["captions"] += [c for c in r.get("captions", []) if c["index"] not in seen]
            for k in ("duplicate_of", "similarity", "how"):
                if k in r and k not in cur:
                    cur[k] = r[k]
            if cur.get("score") is None:
                cur["score"] = r.get("score")
    return merged
