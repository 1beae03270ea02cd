"""Every command option that names a path clipforge writes, and the rule it is written under.

Kept beside the commands so a new one cannot skip the output-path policy (`clipforge.output_dirs`):
`tests/test_output_table.py` walks the parser and fails when an option that writes something is missing here,
and runs each entry below against a file and a folder clipforge did not write, a FIFO and a symbolic link.

Kinds:
  folder      written whole in a temporary sibling, then swapped in; an earlier artifact of the same kind
              is replaced, anything else only with the overwrite flag
  run         a folder filled in place and resumable (a training run, an index, a report folder): continued
              when it is this command's own, refused when it is anything else
  file        one file (or a pair: a head's .safetensors + .json; a manifest's removals and summary):
              an earlier output of the command is replaced, another file only with the overwrite flag
  append      records appended to a results file; any other file is refused
  file|folder a manifest file, or a folder of shards with `--to wds` (the rules of each)

A symbolic link, a device, a FIFO or a socket at the path is refused by every kind, flag or not.
"""
from __future__ import annotations

from typing import NamedTuple, Optional


class Output(NamedTuple):
    kind: str
    overwrite: Optional[str]  # the flag that allows replacing what clipforge did not write, if any
    # False where the output is plain data with no room for a mark (a JSONL/CSV manifest): clipforge cannot
    # tell its own earlier output from someone else's, so it is replaced only with the flag
    recognised: bool = True


OUTPUTS: dict[tuple[str, str], Output] = {
    ("adapt export", "--out"): Output("folder", "--overwrite"),
    ("adapt export", "--base-out"): Output("folder", "--overwrite"),
    ("adapt merge", "--out"): Output("folder", "--overwrite"),
    ("benchmark", "--out"): Output("run", "--overwrite"),
    ("classify", "--out"): Output("file", "--overwrite"),
    ("classify", "--save-head"): Output("file", "--overwrite"),
    ("curate dedup", "--out"): Output("file|folder", "--overwrite"),
    ("curate filter", "--out"): Output("file|folder", "--overwrite"),
    ("curate recaption", "--out"): Output("run", "--overwrite"),
    ("curate report", "--out"): Output("run", None),
    ("curate score", "--out"): Output("file", "--overwrite"),
    ("data convert", "--out"): Output("file|folder", "--overwrite", recognised=False),
    ("data demo", "--out"): Output("folder", None),
    ("data negatives", "--out"): Output("file", "--overwrite", recognised=False),
    ("data reinforce", "--out"): Output("folder", "--overwrite"),
    ("demo", "--out"): Output("folder", "--overwrite"),
    ("embed-dataset", "--out"): Output("run", None),
    ("eval", "--out"): Output("append", None),
    ("explain", "--out"): Output("file", "--overwrite"),
    ("export", "--out"): Output("folder", "--overwrite"),
    ("index build", "--out"): Output("run", None),
    ("index merge", "--out"): Output("file", "--overwrite"),
    ("index shard-build", "--out"): Output("file", "--overwrite"),
    ("index shard-train", "--out"): Output("file", "--overwrite"),
    ("interpolate", "--chart"): Output("file", "--overwrite"),
    ("interpolate", "--out"): Output("folder", "--overwrite"),
    ("report", "--chart"): Output("file", "--overwrite"),
    ("report", "--out"): Output("file", "--overwrite"),
    ("search", "--sheet"): Output("file", "--overwrite"),
    ("stretch", "--out"): Output("folder", "--overwrite"),
    ("train", "--out"): Output("run", "--overwrite"),
}

# option destinations that name something a command writes (how the test finds output options)
OUTPUT_DESTS = ("out", "out_dir", "base_out", "save_head", "sheet", "chart")
