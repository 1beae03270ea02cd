"""Every command option that writes something (the table in `clipforge.cli._outputs`) under one policy:

- the table lists every output option the parser has (a new command cannot skip it);
- a FIFO, a device node or a symbolic link at the path is refused, the overwrite flag or not, and left as it was
  (the link's target untouched);
- a file or a folder clipforge did not write is refused without the flag and left byte for byte;
- a file output replaces its own earlier output without the flag, and someone else's file only with it.

Every refusal is one line (exit 2) and comes before the work: the commands here would take seconds to minutes
if they ran.
"""
import argparse
import json
import os
import re
import stat
from pathlib import Path

import pytest

from clipforge.cli import build_parser, main
from clipforge.cli._outputs import OUTPUT_DESTS, OUTPUTS
from clipforge.models import create_model

WORK = b"years of work\n"


def _parser_outputs() -> dict:
    found = {}

    def walk(p, path):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, path + [name])
            elif a.option_strings and (a.dest in OUTPUT_DESTS or re.search(r"(^|_)(out|output|dump)(_|$)", a.dest)):
                found[(" ".join(path), max(a.option_strings, key=len))] = a
    walk(build_parser(), [])
    return found


def test_the_table_lists_every_output_option_and_its_flags_exist():
    found = _parser_outputs()
    assert set(found) == set(OUTPUTS), "add the option to clipforge/cli/_outputs.py (and a recipe below)"
    assert set(RECIPES) == set(OUTPUTS), "every output option needs a recipe in this file"
    parser = build_parser()
    for (command, _), rule in OUTPUTS.items():
        sub = parser
        for word in command.split():
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        flags = {s for a in sub._actions for s in a.option_strings}
        assert (rule.overwrite in flags) if rule.overwrite else ("--overwrite" not in flags), command


# -- what the commands need --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(tmp_path_factory, photos_demo, photos_index, digits_demo):
    import torch

    from clipforge.models.adapter import save_adapter
    from clipforge.models.lora import LoRAConfig, apply_lora, lora_modules
    from clipforge.models import load_model

    root = tmp_path_factory.mktemp("output-table")
    torch.manual_seed(0)  # class-token pooling: the shape transformers' CLIPModel holds, so HF export works
    ckpt = str(create_model("tiny", vision={"pool": "cls", "act": "quick_gelu"}, text={"act": "quick_gelu"})
               .save_pretrained(root / "tiny"))
    model = load_model(ckpt)
    apply_lora(model, LoRAConfig(rank=2, targets=("attn.qkv",)))
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.1)
    adapter = str(save_adapter(model, root / "adapter", base_model=ckpt))
    photos = f"files:{photos_demo['images_dir']}"
    scores = root / "scores.parquet"
    assert main(["curate", "score", photos, "-m", ckpt, "--out", str(scores), "--workers", "0"]) == 0
    summary_out = root / "kept.jsonl"
    assert main(["curate", "filter", photos, "--scores", str(scores), "--out", str(summary_out),
                 "--min-side", "1"]) == 0
    results = root / "results.jsonl"
    assert main(["eval", "--task", "zeroshot-retrieval", "--dataset", str(photos_index), "--out", str(results)]) == 0
    template = root / "template.cfi"
    assert main(["index", "shard-train", str(photos_index), "--out", str(template), "--index-kind", "flat"]) == 0
    shard = root / "shard.cfi"
    assert main(["index", "shard-build", str(photos_index), "--trained", str(template), "--part", "0/1",
                 "--out", str(shard)]) == 0
    return {"ckpt": ckpt, "adapter": adapter, "photos": photos, "scores": str(scores), "index": str(photos_index),
            "summary": str(root / "kept.summary.json"), "results": str(results), "template": str(template),
            "shard": str(shard), "digits": digits_demo["train_manifest"], "root": root,
            "digits_val": f"imagefolder:{digits_demo['val_dir']}",
            "image": str(sorted(p for p in Path(photos_demo["images_dir"]).rglob("*") if p.is_file())[0])}


def _train(c, t):
    return ["train", "--set", f"data.train=jsonl:{c['digits']}", "--set", "run.steps=1", "--set",
            "data.batch_size=8", "--set", "run.progress=false", "--out", t]


# (option) -> (target file name, argv for a target path). Cheap settings: the file outputs run for real.
RECIPES = {
    ("adapt export", "--out"): ("peft", lambda c, t: ["adapt", "export", c["adapter"], "--to", "peft", "--out", t]),
    ("adapt export", "--base-out"): ("hf", lambda c, t: ["adapt", "export", c["adapter"], "--to", "peft", "--out",
                                                         str(Path(t).parent / "peft-new"), "--base-out", t]),
    ("adapt merge", "--out"): ("merged", lambda c, t: ["adapt", "merge", c["adapter"], "--out", t]),
    ("benchmark", "--out"): ("bench", lambda c, t: ["benchmark", "demo", "-m", c["ckpt"], "--out", t]),
    ("classify", "--out"): ("pred.csv", lambda c, t: ["classify", c["photos"], "-m", c["ckpt"], "--labels",
                                                      "dog,cat", "--out", t]),
    ("classify", "--save-head"): ("h.safetensors", lambda c, t: ["classify", c["photos"], "-m", c["ckpt"],
                                                                 "--labels", "dog,cat", "--save-head", t]),
    ("curate dedup", "--out"): ("dedup.jsonl", lambda c, t: ["curate", "dedup", c["photos"], "--scores",
                                                             c["scores"], "--out", t]),
    ("curate filter", "--out"): ("kept.jsonl", lambda c, t: ["curate", "filter", c["photos"], "--scores",
                                                             c["scores"], "--out", t, "--min-side", "1"]),
    ("curate report", "--out"): ("report", lambda c, t: ["curate", "report", c["summary"], "--out", t]),
    ("curate recaption", "--out"): ("recap", lambda c, t: ["curate", "recaption", c["photos"], "-m", "coca-tiny",
                                                           "--out", t, "--method", "greedy", "--max-tokens", "2"]),
    ("curate score", "--out"): ("s.parquet", lambda c, t: ["curate", "score", c["photos"], "-m", c["ckpt"],
                                                           "--out", t, "--workers", "0"]),
    ("data convert", "--out"): ("m.jsonl", lambda c, t: ["data", "convert", c["photos"], "--to", "jsonl",
                                                         "--out", t]),
    ("data demo", "--out"): ("demo-digits", lambda c, t: ["data", "demo", "digits", "--out", t]),
    ("data negatives", "--out"): ("neg.jsonl", lambda c, t: ["data", "negatives", c["photos"], "--out", t]),
    ("data reinforce", "--out"): ("reinforced", lambda c, t: ["data", "reinforce", c["photos"], "--teacher",
                                                              c["ckpt"], "--out", t]),
    ("demo", "--out"): ("demo", lambda c, t: ["demo", "--quick", "--out", t]),
    ("embed-dataset", "--out"): ("emb", lambda c, t: ["embed-dataset", c["photos"], "-m", c["ckpt"], "--out", t]),
    ("eval", "--out"): ("res.jsonl", lambda c, t: ["eval", "--task", "zeroshot-retrieval", "--dataset", c["index"],
                                                   "--out", t]),
    ("explain", "--out"): ("map.png", lambda c, t: ["explain", "-m", c["ckpt"], "--image", c["image"], "--text",
                                                    "a photo", "--out", t]),
    ("export", "--out"): ("hf", lambda c, t: ["export", c["ckpt"], "--to", "hf", "--out", t]),
    ("index build", "--out"): ("idx", lambda c, t: ["index", "build", c["photos"], "-m", c["ckpt"], "--out", t,
                                                    "--workers", "0"]),
    ("index merge", "--out"): ("merged.cfi", lambda c, t: ["index", "merge", c["shard"], "--out", t]),
    ("index shard-build", "--out"): ("s.cfi", lambda c, t: ["index", "shard-build", c["index"], "--trained",
                                                            c["template"], "--part", "0/1", "--out", t]),
    ("index shard-train", "--out"): ("t.cfi", lambda c, t: ["index", "shard-train", c["index"], "--out", t,
                                                            "--index-kind", "flat"]),
    ("interpolate", "--chart"): ("wise.png", lambda c, t: ["interpolate", c["ckpt"], c["ckpt"], "--alphas", "0,1",
                                                           "--eval-dataset", c["digits_val"], "--chart", t,
                                                           "--out", str(Path(t).parent / "wise-mid")]),
    ("interpolate", "--out"): ("mid", lambda c, t: ["interpolate", c["ckpt"], c["ckpt"], "--alpha", "0.5",
                                                    "--out", t]),
    ("report", "--chart"): ("chart.png", lambda c, t: ["report", c["results"], "--chart", t]),
    ("report", "--out"): ("rep.md", lambda c, t: ["report", c["results"], "--out", t]),
    ("search", "--sheet"): ("sheet.png", lambda c, t: ["search", c["index"], "a photo", "--sheet", t]),
    ("stretch", "--out"): ("long", lambda c, t: ["stretch", c["ckpt"], "--context-length", "64", "--out", t]),
    ("train", "--out"): ("run", _train),
}
ENTRIES = sorted(OUTPUTS)
FILE_ENTRIES = [k for k in ENTRIES if OUTPUTS[k].kind in ("file", "file|folder", "append")]


def _refused(capsys, rc) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _argv(entry, c, target, overwrite: bool):
    argv = RECIPES[entry][1](c, str(target))
    flag = OUTPUTS[entry].overwrite
    return argv + [flag] if overwrite and flag else argv


def _special(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        except (PermissionError, OSError):
            pytest.skip("creating a device node needs root")
    else:
        path.symlink_to(path.parent / "link-target")
        (path.parent / "link-target").write_bytes(WORK) if kind == "file-link" else None


@pytest.mark.parametrize("special", ["fifo", "device", "file-link", "dangling-link"])
@pytest.mark.parametrize("entry", ENTRIES, ids=" ".join)
def test_never_writes_through_or_replaces_a_fifo_device_or_link(entry, special, ctx, tmp_path, capsys):
    target = tmp_path / RECIPES[entry][0]
    _special(special, target)
    before = os.lstat(target)
    _refused(capsys, main(_argv(entry, ctx, target, overwrite=True)))  # the flag does not allow it either
    after = os.lstat(target)
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode), before.st_ino)
    link_target = tmp_path / "link-target"
    if special == "file-link":
        assert link_target.read_bytes() == WORK
    elif special == "dangling-link":
        assert not link_target.exists()


@pytest.mark.parametrize("entry", ENTRIES, ids=" ".join)
def test_refuses_what_it_did_not_write_without_the_flag(entry, ctx, tmp_path, capsys):
    target = tmp_path / RECIPES[entry][0]
    folder = OUTPUTS[entry].kind in ("folder", "run")
    if folder:
        target.mkdir()
        (target / "notes.txt").write_bytes(WORK)
    else:
        target.write_bytes(WORK)
    err = _refused(capsys, main(_argv(entry, ctx, target, overwrite=False)))
    if OUTPUTS[entry].overwrite:
        assert OUTPUTS[entry].overwrite in err, err  # the refusal names the flag that allows it
    if folder:
        assert sorted(os.listdir(target)) == ["notes.txt"] and (target / "notes.txt").read_bytes() == WORK
    else:
        assert target.read_bytes() == WORK
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temp file, no sidecar left


@pytest.mark.slow
@pytest.mark.parametrize("entry", [e for e in FILE_ENTRIES if OUTPUTS[e].overwrite], ids=" ".join)
def test_a_file_output_replaces_its_own_and_others_only_with_the_flag(entry, ctx, tmp_path, capsys):
    target = tmp_path / RECIPES[entry][0]
    target.write_bytes(WORK)
    assert main(_argv(entry, ctx, target, overwrite=True)) == 0, capsys.readouterr().err
    first = target.read_bytes()
    assert first != WORK
    rc = main(_argv(entry, ctx, target, overwrite=False))
    if OUTPUTS[entry].recognised:  # its own earlier output: replaced
        assert rc == 0, capsys.readouterr().err
        assert target.read_bytes()[:8] == first[:8]
    else:  # plain data, unmarked: even its own is replaced only with the flag
        _refused(capsys, rc)
        assert target.read_bytes() == first


def test_eval_appends_to_a_results_file_only(ctx, tmp_path, capsys):
    """`eval --out` appends (never replaces): to a new file or a results file; anything else is refused."""
    res = tmp_path / "res.jsonl"
    argv = RECIPES[("eval", "--out")][1]
    assert main(argv(ctx, str(res))) == 0 and main(argv(ctx, str(res))) == 0
    lines = res.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["task"] == "zeroshot-retrieval" for x in lines)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert main(argv(ctx, str(empty))) == 0 and len(empty.read_text().splitlines()) == 1
