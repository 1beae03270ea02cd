"""No command runs from a stored file (issue 33): a webdataset `pipe:CMD` source runs CMD in a shell, so it is
honoured when the user typed it (command line) or passed it in Python, and refused — one line naming the flag
that accepts it, nothing run — when it was read from an index's index.json, a YAML training config or a
curation summary. `--allow-pipe` / `allow_pipe=True` accepts a stored command."""
from __future__ import annotations

import copy
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipforge.cli import main
from clipforge.data.sources import WdsSource, absolute_spec, open_source
from clipforge.data.sources.trust import StoredCommandRefused, StoredSpec, accept_stored, is_stored, stored_spec
from clipforge.errors import UsageError


def _shard(path, n: int = 4, labels: bool = False) -> str:
    """A plain tar shard of n small PNGs with captions (or .cls labels 0/1)."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
            extra = ("cls", str(i % 2).encode()) if labels else ("txt", f"a photo of thing {i}".encode())
            for ext, data in (("png", buf.getvalue()), extra):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(scope="module")
def pipe_index(tmp_path_factory):
    """An index built from a `pipe:` source the user typed (so typed commands work), and its shard."""
    root = tmp_path_factory.mktemp("pipe_index")
    shard = _shard(root / "shard.tar")
    rc = main(["index", "build", f"wds:pipe:cat {shard}", "--model", "tiny", "--out", str(root / "idx"),
               "--workers", "0"])
    assert rc == 0
    return root / "idx", shard


def _copy_index(pipe_index, tmp_path, source: str | None = None, **extra):
    import shutil

    idx = tmp_path / "idx"
    shutil.copytree(pipe_index[0], idx)
    info = json.loads((idx / "index.json").read_text())
    if source is not None:
        info["source"] = source
    info.update(extra)
    (idx / "index.json").write_text(json.dumps(info))
    return idx


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_typed_pipe_source_builds_and_records_it(pipe_index):
    idx, shard = pipe_index
    info = json.loads((idx / "index.json").read_text())
    assert info["source"] == f"wds:pipe:cat {shard}" and info["count"] == 4


def test_index_update_refuses_a_command_edited_into_index_json(pipe_index, tmp_path, monkeypatch, capsys):
    """The issue's example: index.json's source edited to run `touch PWNED`."""
    idx = _copy_index(pipe_index, tmp_path, "wds:pipe:touch PWNED; cat x.tar")
    before = (idx / "index.json").read_text()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["index", "update", str(idx)]) == 2
    err = _one_line_error(capsys)
    assert "--allow-pipe" in err and "touch PWNED; cat x.tar" in err and "index.json" in err
    assert "`allow_pipe`" not in err  # the CLI names its flag
    assert not (tmp_path / "PWNED").exists()
    assert (idx / "index.json").read_text() == before  # nothing changed either


def test_python_update_refuses_and_names_the_parameter(pipe_index, tmp_path, monkeypatch):
    from clipforge.retrieval.build import update_index

    idx = _copy_index(pipe_index, tmp_path, "wds:pipe:touch PWNED; cat x.tar")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoredCommandRefused, match="`allow_pipe`"):
        update_index(idx, progress=False)
    assert not (tmp_path / "PWNED").exists()


def test_stored_options_cannot_grant_it(pipe_index, tmp_path, monkeypatch):
    """Trust travels in the spec's type: an option in the same file cannot accept the command."""
    from clipforge.retrieval.build import update_index

    idx = _copy_index(pipe_index, tmp_path, "wds:pipe:touch PWNED; cat x.tar",
                      source_options={"allow_pipe": True, "spec": "wds:x.tar"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError):
        update_index(idx, progress=False)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("source", [
    "wds:{x.tar,pipe:touch PWNED; cat x.tar}",  # a brace pattern that expands to a command
    "wds:x.tar::pipe:touch PWNED; cat x.tar",  # one shard of a list
    "wds: \tpipe:touch PWNED; cat x.tar",  # leading blanks, as URL parsers drop them
    "x.tar::pipe:touch PWNED; cat x.tar",  # no kind: auto-detected as shards
])
def test_every_form_of_a_stored_command_is_refused(pipe_index, tmp_path, monkeypatch, capsys, source):
    idx = _copy_index(pipe_index, tmp_path, source)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.tar").write_bytes(open(pipe_index[1], "rb").read())
    capsys.readouterr()
    assert main(["index", "update", str(idx), "--workers", "0"]) == 2
    assert "--allow-pipe" in _one_line_error(capsys)
    assert not (tmp_path / "PWNED").exists()


def test_the_refusal_shows_the_command_escaped(pipe_index, tmp_path, monkeypatch, capsys):
    idx = _copy_index(pipe_index, tmp_path, "wds:pipe:touch PWNED\n\x1b[2Jcat x.tar")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["index", "update", str(idx)]) == 2
    err = _one_line_error(capsys)
    assert "\x1b" not in err and "touch PWNED\\n\\x1b[2Jcat x.tar" in err
    assert not (tmp_path / "PWNED").exists()


def test_allow_pipe_runs_the_stored_command(pipe_index, tmp_path, monkeypatch, capsys):
    idx = _copy_index(pipe_index, tmp_path, f"wds:pipe:touch RAN; cat {pipe_index[1]}")
    monkeypatch.chdir(tmp_path)
    assert main(["index", "update", str(idx), "--allow-pipe", "--workers", "0"]) == 0
    assert (tmp_path / "RAN").exists()
    assert json.loads((idx / "index.json").read_text())["count"] == 4


# --- YAML training configs --------------------------------------------------------------------------------

def _train_setup(tmp_path, val: str | None = None, train: str | None = None):
    rows = []
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "caption": f"a photo of thing {i % 2}"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    val_tar = _shard(tmp_path / "val.tar", n=8, labels=True)
    data = {"train": train or f"jsonl:{tmp_path / 'train.jsonl'}", "batch_size": 4}
    if val is not None:
        data.update(val=val.format(val_tar=val_tar), val_classnames=["zero", "one"])
    cfg = {"model": {"name": "tiny"}, "data": data, "run": {"steps": 2, "progress": False, "threads": 1}}
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return str(tmp_path / "cfg.yaml"), val_tar


@pytest.mark.parametrize("key", ["train", "val"])
def test_train_refuses_a_command_in_its_config_file(tmp_path, monkeypatch, capsys, key):
    bad = "wds:pipe:touch PWNED; cat x.tar"
    cfg, _ = _train_setup(tmp_path, **{key: bad})
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "-c", cfg, "--out", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert "--allow-pipe" in err and "cfg.yaml" in err and "touch PWNED; cat x.tar" in err
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "run").exists()  # refused before the run folder is claimed


def test_train_runs_a_config_command_with_allow_pipe_or_when_typed(tmp_path, monkeypatch):
    cfg, val_tar = _train_setup(tmp_path, val="wds:pipe:touch RAN; cat {val_tar}")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-c", cfg, "--out", str(tmp_path / "run1"), "--allow-pipe"]) == 0
    assert (tmp_path / "RAN").exists()
    assert "pipe:" in (tmp_path / "run1" / "config.yaml").read_text()  # written as the plain string it is
    os.remove(tmp_path / "RAN")
    # the same command given with --set is the user's own
    assert main(["train", "-c", cfg, "--out", str(tmp_path / "run2"),
                 "--set", f"data.val=wds:pipe:touch RAN; cat {val_tar}"]) == 0
    assert (tmp_path / "RAN").exists()


def test_load_config_marks_file_sources_only(tmp_path):
    from clipforge.train import load_config

    cfg_path, _ = _train_setup(tmp_path, val="imagefolder:{val_tar}")
    cfg = load_config(cfg_path)
    assert is_stored(cfg.data.train) and is_stored(cfg.data.val)
    cfg = load_config(cfg_path, ["data.val=wds:elsewhere.tar"])
    assert is_stored(cfg.data.train) and not is_stored(cfg.data.val)
    assert cfg.hash() == load_config(cfg_path, ["data.val=wds:elsewhere.tar"]).hash()


# --- curation summaries, manifests --------------------------------------------------------------------------

def test_curate_report_refuses_a_summary_command(tmp_path, monkeypatch, capsys):
    summary = tmp_path / "kept.summary.json"
    summary.write_text(json.dumps({"step": "filter", "source": "wds:pipe:touch PWNED; cat x.tar"}))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["curate", "report", str(summary), "--out", str(tmp_path / "rep")]) == 2
    err = _one_line_error(capsys)
    assert "--allow-pipe" in err and "kept.summary.json" in err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "rep").exists()


def test_a_manifest_row_cannot_run_a_command(tmp_path, monkeypatch):
    """Manifest image paths are local files, read as bytes: `pipe:` there is a (missing) file name."""
    from clipforge.data.decode import BadSample

    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "pipe:touch PWNED; cat x.png", "caption": "c"}) + "\n")
    monkeypatch.chdir(tmp_path)
    src = open_source(f"jsonl:{tmp_path / 'm.jsonl'}")
    with pytest.raises(BadSample):
        src[0].load_image()
    assert not (tmp_path / "PWNED").exists()


# --- the mechanism ------------------------------------------------------------------------------------------

def test_a_stored_spec_keeps_its_mark_until_accepted(tmp_path):
    s = stored_spec("wds:pipe:cat a.tar", tmp_path / "index.json")
    for same in (str(s), copy.copy(s), copy.deepcopy(s), pickle.loads(pickle.dumps(s)), absolute_spec(s)):
        assert is_stored(same) and same == "wds:pipe:cat a.tar" and same.origin == str(tmp_path / "index.json")
    assert json.loads(json.dumps({"s": s})) == {"s": "wds:pipe:cat a.tar"}
    plain = accept_stored(s, True)
    assert type(plain) is str and plain == s and accept_stored(s, False) is s
    assert stored_spec(None, "x") is None and stored_spec(s, "other").origin == s.origin


def test_python_strings_are_trusted_and_stored_ones_refused_at_the_reader(tmp_path):
    shard = _shard(tmp_path / "a.tar")
    src = open_source(f"wds:pipe:cat {shard}")  # passed in Python: the caller's own
    assert len(list(src)) == 4
    with pytest.raises(StoredCommandRefused):
        open_source(StoredSpec(f"wds:pipe:cat {shard}", "cfg.yaml"))
    with pytest.raises(StoredCommandRefused):  # the reader itself, however it is reached
        WdsSource(StoredSpec(f"pipe:cat {shard}", "cfg.yaml"))
    remote = StoredSpec("wds:https://example.invalid/a.tar", "cfg.yaml")  # a fixed transfer tool, not a command
    assert open_source(remote).urls == ["https://example.invalid/a.tar"]
