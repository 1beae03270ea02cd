"""Output paths: clipforge never deletes or replaces what it did not write (reliability issue, data loss).

Every writer of a whole folder (checkpoints, adapters, exports, demo sets, reinforcement stores, shard folders,
training runs, tours) refuses an unrelated non-empty folder unless `overwrite`, always refuses links, devices and
FIFOs, replaces its own earlier output, and never turns a refusal into a traceback.
"""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from clipforge.atomic import atomic_directory, atomic_write_text
from clipforge.cli import main
from clipforge.errors import UsageError
from clipforge.models import create_model, load_model
from clipforge.output_dirs import MARKER_FILE, artifact_kind
from clipforge.train import load_config, train


def _victim(root: Path) -> Path:
    d = root / "victim"
    d.mkdir()
    (d / "notes.txt").write_text("years of work")
    return d


def _intact(d: Path) -> bool:
    return (d / "notes.txt").read_text() == "years of work" and sorted(os.listdir(d)) == ["notes.txt"]


def _one_line_error(capsys, rc, code=2, *words):
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny model every export format can hold (HF CLIPModel needs class-token pooling)."""
    d = tmp_path_factory.mktemp("exportable") / "tiny"
    create_model("tiny", vision={"pool": "cls", "act": "quick_gelu"}, text={"act": "quick_gelu"}).save_pretrained(d)
    return str(d)


def _device(root: Path) -> Path:
    """A character device node like /dev/null (needs root: CI containers run as root)."""
    dev = root / "null"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("creating a device node needs root")
    return dev


# -- whole-folder writers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["hf", "open_clip"])
def test_export_refuses_an_unrelated_folder_and_keeps_it(tmp_path, capsys, ckpt, fmt):
    victim = _victim(tmp_path)
    rc = main(["export", ckpt, "--to", fmt, "--out", str(victim)])
    _one_line_error(capsys, rc, 2, "--overwrite", "notes.txt")
    assert _intact(victim)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".victim")]  # no temp dir left behind


def test_export_overwrite_replaces_and_a_second_export_needs_no_flag(tmp_path, capsys, ckpt):
    victim = _victim(tmp_path)
    assert main(["export", ckpt, "--to", "hf", "--out", str(victim), "--overwrite"]) == 0
    assert not (victim / "notes.txt").exists() and (victim / "model.safetensors").is_file()
    assert artifact_kind(victim) == "hf-export"
    assert main(["export", ckpt, "--to", "hf", "--out", str(victim)]) == 0  # its own earlier export
    rc = main(["export", ckpt, "--to", "open_clip", "--out", str(victim)])  # another kind: refused
    _one_line_error(capsys, rc, 2, "hf-export")


def test_never_writes_through_a_device_fifo_or_symlink_even_with_overwrite(tmp_path, capsys, ckpt):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "real"
    create_model("tiny").save_pretrained(target)
    before = sorted(os.listdir(target))
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    for out, word in [(fifo, "FIFO"), (link, "symbolic link"), (_device(tmp_path), "character device")]:
        for extra in ([], ["--overwrite"]):
            rc = main(["export", ckpt, "--to", "hf", "--out", str(out), *extra])
            _one_line_error(capsys, rc, 2, word)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISCHR(os.lstat(tmp_path / "null").st_mode)
    assert link.is_symlink() and sorted(os.listdir(target)) == before


def test_out_dot_and_a_regular_file_are_one_line_errors(tmp_path, capsys, ckpt, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("x")
    monkeypatch.chdir(work)
    _one_line_error(capsys, main(["export", ckpt, "--to", "hf", "--out", "."]), 2, "current directory")
    _one_line_error(capsys, main(["adapt", "merge", ckpt, "--out", "notes.txt"]), 2)  # no adapter: usage error
    _one_line_error(capsys, main(["interpolate", ckpt, ckpt, "--out", "notes.txt"]), 2, "is a file")
    assert (work / "notes.txt").read_text() == "x"


def test_save_pretrained_replaces_its_own_and_refuses_others(tmp_path):
    m = create_model("tiny")
    out = m.save_pretrained(tmp_path / "ck")
    assert artifact_kind(out) == "checkpoint"
    m.save_pretrained(tmp_path / "ck")  # its own: replaced
    (out / MARKER_FILE).unlink()  # a checkpoint an older version wrote: recognised by its config.json
    m.save_pretrained(tmp_path / "ck")
    victim = _victim(tmp_path)
    with pytest.raises(UsageError, match="overwrite"):
        m.save_pretrained(victim)
    assert _intact(victim)
    m.save_pretrained(victim, overwrite=True)
    assert load_model(victim) is not None and not (victim / "notes.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    m.save_pretrained(empty)  # an empty folder is fine
    assert (empty / "model.safetensors").is_file()


def test_adapter_save_and_demo_builder_refuse_unrelated_folders(tmp_path):
    from clipforge.data.demo_sets import build_photos
    from clipforge.models import apply_lora, save_adapter
    from clipforge.models.lora import LoRAConfig

    m = create_model("tiny")
    apply_lora(m, LoRAConfig(rank=2))
    victim = _victim(tmp_path)
    with pytest.raises(UsageError, match="not a clipforge adapter"):
        save_adapter(m, victim, base_model="tiny")
    with pytest.raises(UsageError, match="not a clipforge demo-set"):
        build_photos(str(victim))
    assert _intact(victim)
    save_adapter(m, tmp_path / "ad", base_model="tiny")
    save_adapter(m, tmp_path / "ad", base_model="tiny")  # its own
    with pytest.raises(UsageError, match="clipforge adapter"):  # a checkpoint is not written over an adapter
        create_model("tiny").save_pretrained(tmp_path / "ad")


def test_a_failed_write_leaves_the_old_artifact_and_no_temp(tmp_path):
    out = create_model("tiny").save_pretrained(tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(tmp):
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_directory(out, boom, kind="checkpoint")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_file_writers_never_replace_a_folder_fifo_or_link(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere.txt")
    for p in (d, fifo, link):
        with pytest.raises(UsageError, match="replaces only files"):
            atomic_write_text(p, "x")
    assert d.is_dir() and stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
    assert not (tmp_path / "elsewhere.txt").exists()


def test_data_convert_wds_refuses_a_folder_with_shard_named_user_files(tmp_path, capsys, photos_demo):
    """An earlier conversion's stale shards are removed; a folder that is not one keeps every file."""
    victim = _victim(tmp_path)
    (victim / "shard-000009.tar").write_bytes(b"mine")
    rc = main(["data", "convert", photos_demo["images_dir"], "--to", "wds", "--out", str(victim)])
    _one_line_error(capsys, rc, 2, "--overwrite")
    assert (victim / "shard-000009.tar").read_bytes() == b"mine" and (victim / "notes.txt").exists()
    out = tmp_path / "wds"
    assert main(["data", "convert", photos_demo["images_dir"], "--to", "wds", "--out", str(out),
                 "--shard-size", "2"]) == 0
    n_small = len(list(out.glob("shard-*.tar")))
    assert main(["data", "convert", photos_demo["images_dir"], "--to", "wds", "--out", str(out)]) == 0
    assert n_small > 1 and len(list(out.glob("shard-*.tar"))) == 1  # its own stale shards went


def test_manifest_convert_keeps_someone_elses_classnames(tmp_path, capsys, digits_demo):
    out = tmp_path / "m"
    out.mkdir()
    (out / "classnames.txt").write_text("cat\ndog\n")
    rc = main(["data", "convert", f"imagefolder:{digits_demo['val_dir']}", "--to", "jsonl",
               "--out", str(out / "digits.jsonl")])
    _one_line_error(capsys, rc, 2, "classnames.txt", "--overwrite")
    assert (out / "classnames.txt").read_text() == "cat\ndog\n" and not (out / "digits.jsonl").exists()


# -- training runs ---------------------------------------------------------------------------------------------

def _run_cfg(demo, steps):
    return load_config(None, [f"data.train=jsonl:{demo['train_manifest']}", "data.batch_size=32",
                              "run.log_every=1", f"run.checkpoint_every={steps}", "run.progress=false",
                              "run.threads=1", f"run.steps={steps}"])


def test_train_into_an_existing_run_needs_resume_or_overwrite(tmp_path, capsys, digits_demo):
    run = tmp_path / "run"
    train(_run_cfg(digits_demo, 4), run)
    final_before = (run / "final" / "model.safetensors").read_bytes()
    metrics_before = (run / "metrics.jsonl").read_text()
    with pytest.raises(UsageError, match="`resume` latest.*`overwrite`"):
        train(_run_cfg(digits_demo, 2), run)
    assert (run / "final" / "model.safetensors").read_bytes() == final_before
    assert (run / "metrics.jsonl").read_text() == metrics_before
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000004"]
    with pytest.raises(UsageError, match="contradict"):
        train(_run_cfg(digits_demo, 2), run, resume="latest", overwrite=True)
    # --overwrite starts clean: the old run's checkpoints are gone, so `resume latest` cannot jump into it
    train(_run_cfg(digits_demo, 2), run, overwrite=True)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_train_cli_refusal_names_the_flags(tmp_path, capsys, digits_demo):
    victim = _victim(tmp_path)
    args = ["train", "--set", f"data.train=jsonl:{digits_demo['train_manifest']}", "--set", "run.steps=1",
            "--set", "data.batch_size=32", "--set", "run.progress=false"]
    _one_line_error(capsys, main(args + ["--out", str(victim)]), 2, "--overwrite", "not a clipforge training-run")
    assert _intact(victim)
    run = tmp_path / "run"
    assert main(args + ["--out", str(run)]) == 0
    capsys.readouterr()
    _one_line_error(capsys, main(args + ["--out", str(run)]), 2, "--resume latest", "--overwrite")


def test_a_killed_writer_leaves_nothing_under_the_final_name(tmp_path):
    """kill -9 while a checkpoint directory is being written: the final name never appears half-done."""
    code = ("import os, sys\nfrom clipforge.atomic import atomic_directory\n"
            "def w(tmp):\n    (tmp / 'a').write_text('x')\n    os.kill(os.getpid(), 9)\n"
            "atomic_directory(sys.argv[1], w, kind='checkpoint')\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ck")], capture_output=True)
    assert r.returncode == -9 and not (tmp_path / "ck").exists()
