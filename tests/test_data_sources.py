"""Readers: manifests (csv/tsv/jsonl/parquet), image folders, files folders, and spec parsing."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from clipforge.data import open_source
from clipforge.data.sources import FilesSource, ImageFolderSource, ManifestSource
from clipforge.errors import ClipforgeError, UsageError
from data_fixtures import make_pair_folder, pattern


def _img(path, seed=0, size=8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pattern(size, size, seed)).save(path)


def test_csv_repeated_rows_merge_and_paths_resolve_against_manifest(tmp_path):
    _img(tmp_path / "imgs" / "a.png", 1)
    _img(tmp_path / "imgs" / "b.png", 2)
    (tmp_path / "m.csv").write_text('filepath,title\nimgs/a.png,a red thing\nimgs/b.png,"b, with comma"\n'
                                    "imgs/a.png,another caption for a\n")
    os.chdir("/")  # relative paths must not depend on the working directory
    src = open_source(f"csv:{tmp_path / 'm.csv'}")
    assert len(src) == 2
    a = src[0]
    assert a.id == "imgs/a.png" and a.captions == ["a red thing", "another caption for a"]
    assert src[1].captions == ["b, with comma"]
    np.testing.assert_array_equal(np.asarray(a.image), pattern(8, 8, 1))


def test_tsv_jsonl_parquet_with_list_captions_ids_and_labels(tmp_path):
    _img(tmp_path / "x.png", 3)
    (tmp_path / "m.tsv").write_text('key\timage\tcaptions\tlabel\nk1\tx.png\t["one", "two"]\t3\n')
    s = open_source(str(tmp_path / "m.tsv"))
    assert (s[0].id, s[0].captions, s[0].label) == ("k1", ["one", "two"], 3)

    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "j1", "image": "x.png", "captions": ["p", "q"],
                                                  "label": 1, "source": "web"}) + "\n\n")
    s = open_source(str(tmp_path / "m.jsonl"))
    assert (s[0].id, s[0].captions, s[0].label, s[0].meta["source"]) == ("j1", ["p", "q"], 1, "web")

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": ["x.png", "x.png"], "text": [["u", "v"], ["w"]]}), tmp_path / "m.parquet")
    s = open_source(f"parquet:{tmp_path / 'm.parquet'}")
    assert len(s) == 1 and s[0].captions == ["u", "v", "w"]


def test_string_labels_become_sorted_classnames_or_follow_classnames_txt(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("image,label\na.png,dog\na2.png,cat\na3.png,dog\n")
    s = open_source(str(tmp_path / "m.csv"), id_col=None)
    assert s.classnames == ["cat", "dog"] and [x.label for x in s] == [1, 0, 1]
    (tmp_path / "classnames.txt").write_text("dog\ncat\nbird\n")
    s = open_source(str(tmp_path / "m.csv"))
    assert s.classnames == ["dog", "cat", "bird"] and [x.label for x in s] == [0, 1, 0]


def test_missing_column_names_the_column_and_the_available_ones(tmp_path):
    (tmp_path / "m.csv").write_text("picture,words\na.png,hi\n")
    with pytest.raises(UsageError) as e:
        open_source(str(tmp_path / "m.csv"))
    assert "image" in str(e.value) and "picture" in str(e.value) and "words" in str(e.value)
    with pytest.raises(UsageError) as e:
        open_source(str(tmp_path / "m.csv"), image_col="picture", caption_col="caption")
    assert "'caption'" in str(e.value) and "['picture', 'words']" in str(e.value)
    s = open_source(str(tmp_path / "m.csv"), image_col="picture", caption_col="words")
    assert s[0].captions == ["hi"]


def test_bad_rows_are_counted_not_fatal(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "caption": "ok"}\n{not json\n[1, 2]\n'
                                      '{"image": "", "caption": "no image"}\n')
    s = open_source(str(tmp_path / "m.jsonl"))
    assert len(s) == 1
    assert dict(s.skipped) == {"bad_record": 2, "no_image": 1}
    assert [r for _, r in s.skipped.samples] == ["bad_record", "bad_record", "no_image"]
    list(s.iter_decoded())
    assert s.skipped.total == 3  # a pass keeps what opening found


def test_imagefolder_labels_classnames_and_loose_files(tmp_path):
    for cls, n in (("n02", 2), ("n01", 3)):
        for i in range(n):
            _img(tmp_path / cls / f"{i}.png", i)
    _img(tmp_path / "loose.png")
    s = open_source(f"imagefolder:{tmp_path}")
    assert isinstance(s, ImageFolderSource)
    assert s.classnames == ["n01", "n02"]
    assert [(x.id, x.label) for x in s] == [("n01/0.png", 0), ("n01/1.png", 0), ("n01/2.png", 0),
                                           ("n02/0.png", 1), ("n02/1.png", 1)]
    assert s.skipped.samples == [("loose.png", "bad_record")]
    (tmp_path / "classnames.json").write_text(json.dumps({"n01": "goldfish", "n02": "shark"}))
    assert open_source(f"imagefolder:{tmp_path}").classnames == ["goldfish", "shark"]
    (tmp_path / "classnames.json").unlink()
    (tmp_path / "classnames.txt").write_text("only one\n")
    with pytest.raises(UsageError, match="1 class names but 2"):
        open_source(f"imagefolder:{tmp_path}")


def test_files_folder_captions_meta_and_ids(tmp_path):
    rows = make_pair_folder(str(tmp_path), n=7)
    s = open_source(f"files:{tmp_path}")
    assert isinstance(s, FilesSource)
    got = {x.id: (x.captions, x.label) for x in s}
    assert got == {r["id"]: (r["captions"], r["label"]) for r in rows}
    assert s[0].meta["source"] == "test" and "size" in s[0].meta and "mtime" in s[0].meta


def test_spec_kinds_and_autodetect(tmp_path):
    for cls in ("a", "b"):
        _img(tmp_path / "cls" / cls / "0.png")
    make_pair_folder(str(tmp_path / "pairs"), n=2)
    assert isinstance(open_source(str(tmp_path / "cls")), ImageFolderSource)
    assert isinstance(open_source(f"folder:{tmp_path / 'cls'}"), ImageFolderSource)
    assert isinstance(open_source(f"folder:{tmp_path / 'pairs'}"), FilesSource)
    (tmp_path / "m.jsonl").write_text('{"image": "x.png"}\n')
    assert isinstance(open_source(str(tmp_path / "m.jsonl")), ManifestSource)
    with pytest.raises(UsageError, match="valid kinds"):
        open_source(f"zip:{tmp_path}")
    with pytest.raises(ClipforgeError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="image_col"):
        open_source(f"imagefolder:{tmp_path / 'cls'}", image_col="x")
    with pytest.raises(ClipforgeError):
        open_source(f"csv:{tmp_path / 'missing.csv'}")


def test_clipforge_folders_that_hold_no_images_are_named_as_what_they_are(photos_index, tmp_path, capsys):
    """`index build INDEX --out INDEX` (and any command given an index or a checkpoint as its source) says what
    the folder is, instead of 'no class sub-folders' or a clash with the output."""
    import shutil

    from clipforge.cli import main
    from clipforge.models import create_model

    ckpt = create_model("tiny").save_pretrained(tmp_path / "ckpt")
    own = tmp_path / "idx"
    shutil.copytree(photos_index, own)
    before = sorted(p.name for p in own.iterdir())
    for argv, what in ((["index", "build", str(own), "-m", "tiny", "--out", str(own)], "is an index"),
                       (["data", "check", str(own)], "is an index"),
                       (["data", "check", str(ckpt)], "is a model checkpoint")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0] and "not a collection of images" in err[0], err
    assert sorted(p.name for p in own.iterdir()) == before
    with pytest.raises(UsageError, match="is an index"):
        open_source(str(own))
