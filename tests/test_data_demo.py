"""Demo datasets: digits (pairs + held-out split + unseen templates) and photos, built offline."""
import json
import os
from collections import Counter

import numpy as np
import pytest

from clipforge.cli import main
from clipforge.data import open_source
from clipforge.data.demo_sets import DIGIT_NAMES, TRAIN_TEMPLATES, UNSEEN_TEMPLATES, build_digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return build_digits(str(tmp_path_factory.mktemp("demo") / "digits"), size=32, seed=0)


def test_digits_layout_split_and_captions(digits):
    from sklearn.datasets import load_digits

    y = load_digits().target
    train = open_source(digits["train_manifest"])
    val = open_source(digits["val_dir"])
    assert len(train) + len(val) == len(y) == 1797
    assert len(val) == digits["num_val"] == 360
    assert train.classnames == val.classnames == DIGIT_NAMES
    # Stratified: class proportions of the held-out split follow the full set within one image.
    full = Counter(y.tolist())
    held = Counter(s.label for s in val)
    for c in range(10):
        assert abs(held[c] - full[c] * 360 / 1797) <= 1
    # Train and val never share a source image.
    assert not {s.id.split("-")[-1] for s in train} & {s.id.split("/")[-1][:4] for s in val}
    s = train[0]
    assert s.image.size == (32, 32) and s.image.mode == "RGB" and len(s.captions) == 6
    word, digit = DIGIT_NAMES[s.label], str(s.label)
    assert all(word in c or digit in c for c in s.captions)
    # Labels match scikit-learn's for the source image named in the id.
    assert all(x.label == y[int(x.id.split("-")[-1])] for x in train)
    # The up-scaled image still looks like its 8x8 source: shrunk back, it correlates with it.
    from PIL import Image

    small = np.asarray(s.image.convert("L").resize((8, 8), Image.BOX), dtype=float).ravel()
    src8 = load_digits().images[int(s.id.split("-")[-1])].ravel()
    assert np.corrcoef(small, src8)[0, 1] > 0.5


def test_digits_ship_class_descriptions_for_gist_and_cupl(digits):
    """docs/adaptation.md says the digits demo ships descriptions.json: four or more for each of its classes."""
    import json

    desc = json.loads(open(digits["descriptions"], encoding="utf-8").read())
    assert sorted(desc) == sorted(DIGIT_NAMES) and all(len(v) >= 4 and all(v) for v in desc.values())


def test_templates_are_disjoint_and_plentiful(digits):
    tr = open(digits["templates_train"]).read().splitlines()
    un = open(digits["templates_unseen"]).read().splitlines()
    assert tr == TRAIN_TEMPLATES and un == UNSEEN_TEMPLATES
    assert len(tr) >= 8 and len(un) >= 4 and not set(tr) & set(un)
    assert all("{c}" in t for t in tr + un)
    val = open_source(digits["val_manifest"])  # held-out captions use only unseen phrasing
    filled = {t.format(c=c) for t in un for c in DIGIT_NAMES + [str(i) for i in range(10)]}
    assert all(cap in filled for s in val for cap in s.captions)


def test_train_captions_share_no_word_with_unseen_templates(digits):
    import re

    def words(text):
        return set(re.findall(r"[a-z]+", text.lower()))

    train_words = set().union(*(words(c) for s in open_source(digits["train_manifest"]) for c in s.captions))
    template_words = set().union(*(words(t.replace("{c}", "")) for t in TRAIN_TEMPLATES))
    unseen_only = set().union(*(words(t.replace("{c}", "")) for t in UNSEEN_TEMPLATES)) - template_words
    assert unseen_only and not train_words & unseen_only
    assert len(train_words) > len(template_words) + 20  # decorated: far more varied than the bare templates


def test_digits_is_idempotent(digits):
    marker = os.path.join(digits["root"], ".clipforge_demo.json")
    before = os.stat(marker).st_mtime_ns
    again = build_digits(digits["root"], size=32, seed=0)
    assert again == digits and os.stat(marker).st_mtime_ns == before


def test_demo_cli_digits_reuses_a_finished_build(digits, capsys):
    assert main(["data", "demo", "digits", "--out", digits["root"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == digits
    assert main(["data", "demo", "digits", "--out", digits["root"], "--size", "5"]) == 2  # UsageError
    assert "size" in capsys.readouterr().err


def test_digits_refuses_a_foreign_non_empty_folder(tmp_path):
    from clipforge.errors import UsageError

    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(UsageError):
        build_digits(str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_photos_demo_and_cli(tmp_path, capsys):
    rc = main(["data", "demo", "photos", "--out", str(tmp_path / "photos"), "--json"])
    assert rc == 0
    paths = json.loads(capsys.readouterr().out)
    assert paths["num_photos"] >= 10
    man = open_source(paths["manifest"])
    files = open_source(f"files:{paths['images_dir']}")
    assert len(man) == len(files) == paths["num_photos"]
    by_id = {s.id: s.captions for s in man}
    assert "astronaut" in by_id and all(len(c) >= 3 for c in by_id.values())
    for s, img in files.iter_decoded():
        assert img.mode == "RGB" and max(img.size) <= 256
        assert s.captions == by_id[os.path.splitext(s.id)[0]]
    assert files.skipped.total == 0
