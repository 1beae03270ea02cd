"""Atomic writes give files the permissions the umask allows (0644 under 022, not mkstemp's 0600), for every
kind of file clipforge writes, and name a missing destination folder in one line."""
import os
import stat

import pytest

from clipforge.atomic import atomic_write_json, atomic_write_path, atomic_write_text, current_umask
from clipforge.errors import ClipforgeError


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)
        return mask
    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_files_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    want = 0o666 & ~mask
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == want
    assert _mode(atomic_write_json(tmp_path / "a.json", {"a": 1})) == want
    assert _mode(atomic_write_path(tmp_path / "a.bin", lambda p: open(p, "wb").close())) == want


def test_everything_an_index_and_a_checkpoint_hold_is_readable_by_others(photos_demo, tmp_path, umask):
    """index.json, manifest.json, index.faiss, shards, model.safetensors, tokenizer.json, contact sheets,
    reports, manifests and shards written by `data convert`: 0644 under umask 022."""
    from clipforge.cli import main
    from clipforge.models import create_model

    umask(0o022)
    create_model("tiny").save_pretrained(tmp_path / "ck")
    assert main(["index", "build", f"files:{photos_demo['images_dir']}", "--model", "tiny",
                 "--out", str(tmp_path / "idx"), "--workers", "0"]) == 0
    assert main(["search", str(tmp_path / "idx"), "a cat", "-k", "3", "--sheet", str(tmp_path / "s.png")]) == 0
    assert main(["data", "convert", photos_demo["images_dir"], "--to", "jsonl", "--out",
                 str(tmp_path / "conv" / "m.jsonl")]) == 0
    assert main(["data", "convert", photos_demo["images_dir"], "--to", "wds", "--out", str(tmp_path / "wds")]) == 0
    from clipforge.evaluate.results import append_result, make_record

    append_result(tmp_path / "r.jsonl", make_record("tiny", "digits", "zeroshot-classification", {"top1": 0.5}))
    assert main(["report", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "rep" / "report.md")]) == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"index.json", "manifest.json", "index.faiss", "model.safetensors", "tokenizer.json", "config.json",
            "s.png", "m.jsonl", "shard-000000.tar", "report.md", "report.png", "r.jsonl"} <= names
    bad = {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files if _mode(p) != 0o644}
    assert not bad, bad


def test_missing_folder_is_one_line(tmp_path):
    with pytest.raises(ClipforgeError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "x.txt", "x")
    assert list(tmp_path.iterdir()) == []
