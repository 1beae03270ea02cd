"""A damaged index (a file truncated by a full disk, garbage or a pickle under an embedding shard's name, a
manifest that is not JSON) makes `clipforge search` / `index info` a one-line error with exit code 1 naming the
file, never a traceback; nothing in it is ever unpickled."""
import pickle
import shutil

import numpy as np
import pytest

from clipforge.cli import main
from clipforge.errors import ClipforgeError
from clipforge.retrieval.store import EmbeddingStore


def _truncate(path, keep=10):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


DAMAGE = {  # name -> (change to the index directory, the file the one line must name)
    "manifest_truncated": (lambda d: _truncate(d / "manifest.json"), "manifest.json"),
    "manifest_empty": (lambda d: (d / "manifest.json").write_text(""), "manifest.json"),
    "manifest_a_list": (lambda d: (d / "manifest.json").write_text("[1, 2]"), "manifest.json"),
    "manifest_nested_deep": (lambda d: (d / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
                             "manifest.json"),
    "embeddings_garbage": (lambda d: (d / "img_emb" / "img_emb_0.npy").write_bytes(b"junk"), "img_emb_0.npy"),
    "embeddings_truncated": (lambda d: _truncate(d / "img_emb" / "img_emb_0.npy", 200), "img_emb_0.npy"),
    "embeddings_a_pickle": (lambda d: np.save(d / "img_emb" / "img_emb_0.npy", np.array([{"a": 1}], dtype=object),
                                              allow_pickle=True), "img_emb_0.npy"),
    "embeddings_wrong_shape": (lambda d: np.save(d / "img_emb" / "img_emb_0.npy", np.zeros((3, 5), np.float16)),
                               "img_emb_0.npy"),
    "embeddings_missing": (lambda d: (d / "img_emb" / "img_emb_0.npy").unlink(), "img_emb_0.npy"),
    "metadata_garbage": (lambda d: (d / "metadata" / "metadata_0.parquet").write_bytes(b"PAR1 not really"),
                         "metadata_0.parquet"),
}


@pytest.fixture(scope="module")
def damaged(photos_index, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    out = {}
    for name, (change, needle) in DAMAGE.items():
        d = root / name
        shutil.copytree(photos_index, d)
        change(d)
        out[name] = (d, needle)
    return out


def test_the_damage_targets_files_the_index_has(photos_index):
    names = {p.name for p in photos_index.rglob("*") if p.is_file()}
    assert {"manifest.json", "img_emb_0.npy", "metadata_0.parquet"} <= names


@pytest.mark.parametrize("name", DAMAGE)
def test_damaged_index_is_a_one_line_error_naming_the_file(damaged, name, capsys):
    d, needle = damaged[name]
    rc = main(["search", str(d), "a photo", "-k", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and needle in err[0] and "Traceback" not in err[0], (rc, err)


def test_a_pickle_under_a_shard_name_is_never_loaded(tmp_path, photos_index, monkeypatch):
    d = tmp_path / "idx"
    shutil.copytree(photos_index, d)
    np.save(d / "img_emb" / "img_emb_0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(ClipforgeError, match="pickle"):
        EmbeddingStore.open(d).load()
