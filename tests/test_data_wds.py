"""Writing and reading shards and manifests: folder -> wds -> back keeps ids, captions, labels and pixels."""
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipforge.cli import main
from clipforge.data import open_source
from clipforge.data.sources import WdsSource
from clipforge.data.write import convert
from data_fixtures import make_mixed_folder, make_pair_folder


def _pixels(src):
    return {s.id: np.asarray(img) for s, img in src.iter_decoded()}


def _by_id(src):
    return {s.id: (s.captions, s.label) for s in src}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pairs"))
    make_pair_folder(root, n=11)
    return root


def test_folder_to_wds_round_trip(pairs, tmp_path, capsys):
    out = str(tmp_path / "shards")
    rc = main(["data", "convert", f"files:{pairs}", "--to", "wds", "--out", out, "--shard-size", "4", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 11 and len(summary["shards"]) == 3  # 4 + 4 + 3
    # The shards, and the marker that lets a rerun with --overwrite recognise the folder.
    assert sorted(os.listdir(out)) == [".clipforge.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]

    orig = open_source(f"files:{pairs}")
    for spec in (f"wds:{out}/shard-{{000000..000002}}.tar", out, f"wds:{out}"):
        back = open_source(spec)
        assert isinstance(back, WdsSource)
        # Streaming (webdataset) and indexed access give the same records in the same order.
        streamed = [(s.id, s.captions, s.label) for s in back]
        indexed = [(back[i].id, back[i].captions, back[i].label) for i in range(len(back))]
        assert streamed == indexed
        assert [s[0] for s in streamed] == [s.id for s in orig]  # same ids, same order
        assert _by_id(back) == _by_id(orig)
        a, b = _pixels(orig), _pixels(back)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_shard_members_follow_webdataset_conventions(pairs, tmp_path):
    out = str(tmp_path / "s")
    convert(open_source(f"files:{pairs}"), "wds", out, shard_size=100)
    with tarfile.open(os.path.join(out, "shard-000000.tar")) as tf:
        names = tf.getnames()
        assert names[:3] == ["000000000.png", "000000000.json", "000000000.txt"]
        meta = json.loads(tf.extractfile("000000000.json").read())
        assert meta["id"] == "img.00.png" and meta["captions"] == ["picture 0 caption 0"]
        assert "000000000.cls" in names and tf.extractfile("000000000.cls").read() == b"0"


def test_plain_webdataset_shards_without_json(tmp_path):
    """Shards written by other tools: key = id, .txt caption, .cls label, and a member without image."""
    import io

    import webdataset as wds

    from data_fixtures import pattern

    path = str(tmp_path / "ext-0.tar")
    with wds.TarWriter(path) as w:
        for i in range(3):
            buf = io.BytesIO()
            Image.fromarray(pattern(8, 8, i)).save(buf, "PNG")
            w.write({"__key__": f"s{i}", "png": buf.getvalue(), "txt": f"caption {i}", "cls": str(i)})
        w.write({"__key__": "noimg", "txt": "orphan caption"})
    src = open_source(path)
    assert [(s.id, s.captions, s.label) for s in src] == [
        ("s0", ["caption 0"], 0), ("s1", ["caption 1"], 1), ("s2", ["caption 2"], 2), ("noimg", ["orphan caption"], None)]
    assert len(src) == 4 and [s.id for s, _ in src.iter_decoded()] == ["s0", "s1", "s2"]
    assert src.skipped.samples == [("noimg", "no_image")]
    np.testing.assert_array_equal(np.asarray(src[2].image), pattern(8, 8, 2))


def test_convert_skips_and_reports_bad_images(tmp_path, capsys):
    expected = make_mixed_folder(str(tmp_path / "mixed"))
    out = str(tmp_path / "w")
    assert main(["data", "convert", str(tmp_path / "mixed"), "--to", "wds", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "skipped 4" in err and "too_large=1" in err
    back = open_source(out)
    assert sorted(s.id for s in back) == sorted(n for n, r in expected.items() if r is None)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_wds_to_manifest_round_trip(pairs, tmp_path, fmt):
    shards = str(tmp_path / "shards")
    convert(open_source(f"files:{pairs}"), "wds", shards, shard_size=5)
    man = str(tmp_path / "out" / f"m.{fmt}")
    summary = convert(open_source(shards), fmt, man)
    assert summary["written"] == 11
    back = open_source(man)
    orig = open_source(f"files:{pairs}")
    assert [s.id for s in back] == [s.id for s in orig]
    assert _by_id(back) == _by_id(orig)
    a, b = _pixels(orig), _pixels(back)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # Folder sources are referenced where they are, not copied.
    summary = convert(orig, fmt, str(tmp_path / "ref" / f"r.{fmt}"))
    assert not os.path.exists(tmp_path / "ref" / "r_images")
    assert _by_id(open_source(summary["out"])) == _by_id(orig)


def test_a_truncated_shard_is_counted_once_and_its_head_still_read(pairs, tmp_path):
    out = str(tmp_path / "s")
    convert(open_source(f"files:{pairs}"), "wds", out, shard_size=6)  # 6 + 5 samples
    first = os.path.join(out, "shard-000000.tar")
    data = open(first, "rb").read()
    with open(first, "wb") as f:
        f.write(data[: len(data) // 2 + 1000])  # cut inside a member's data
    src = open_source(out)
    indexed = [src[i].id for i in range(len(src))]
    passed = [s.id for s, _ in src.iter_decoded()]
    assert passed == indexed
    orig = [s.id for s in open_source(f"files:{pairs}")]
    assert 6 + 5 > len(indexed) >= 5 and indexed[-5:] == orig[-5:] and indexed[:-5] == orig[: len(indexed) - 5]
    assert src.skipped.total == 1 and "shard-000000.tar" in src.skipped.samples[0][0]
    # Streaming without the index (as for remote shards) counts it too.
    fresh = open_source(out)
    ids = [s.id for s in fresh]
    assert ids[-5:] == orig[-5:] and fresh.skipped.total >= 1
