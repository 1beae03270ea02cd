"""De-duplication: exact hashing finds every planted copy, near-duplicate search finds resized / re-encoded
copies and leaves distinct images, both pair searches and the keep rule behave as documented."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clipforge.curate import (candidate_pairs, dedup_source, exact_duplicates, keep_greedy, near_duplicates,
                              read_removals, score_source)
from clipforge.data.sources import open_source
from clipforge.encode import Encoder
from clipforge.errors import UsageError
from curate_fixtures import broken_rows, digits_rows, plant_copies, write_manifest


@pytest.fixture(scope="module")
def planted(digits_demo, photos_demo, tmp_path_factory):
    """Digits with an exact byte copy, a pixel-identical PNG re-save and resized / JPEG copies, plus the photos
    demo with resized and JPEG copies; broken files too. Scored once, with both kinds of image features."""
    root = tmp_path_factory.mktemp("dedup")
    rows = digits_rows(digits_demo, 30)
    copies = plant_copies(rows, root / "copies", kinds=("bytes", "pixels", "upscale", "downscale", "jpeg"))
    photos = [json.loads(x) for x in open(photos_demo["manifest"])]
    for p in photos:
        p["image"] = str(photos_demo["root"] + "/" + p["image"])
        p["id"] = f"photo-{p['id']}"
    pcopies = plant_copies(photos, root / "pcopies", kinds=("upscale", "downscale", "jpeg"))
    for c in pcopies:
        c["id"] = "p" + c["id"]
    spec = write_manifest(root / "m.jsonl", rows[:15] + copies + photos + rows[15:] + pcopies
                          + broken_rows(root / "broken"))
    scores = root / "scores.parquet"
    score_source(spec, Encoder.load("tiny", precision="fp32"), scores, progress=False, pixel_features=True)
    return {"spec": spec, "scores": scores, "copies": copies + pcopies, "root": root, "n": len(open_source(spec))}


def test_exact_dedup_finds_every_planted_copy_and_nothing_else(planted, tmp_path):
    s = dedup_source(planted["spec"], tmp_path / "d.jsonl", scores=planted["scores"], eps=0.0, features="pixels",
                     eps_report=())
    rem = read_removals(s["removals_file"])
    exact = {(r["id"], r["duplicate_of"]) for r in rem if r["reasons"] == ["exact_duplicate"]}
    want = {(c["id"], c["_of"]) for c in planted["copies"] if c["_kind"] in ("bytes", "pixels")}
    assert exact == want  # the first in source order stays; the copies come later
    assert s["exact_by"] == {"bytes": 1, "pixels": 1}


def test_near_dedup_finds_resized_and_reencoded_copies_and_leaves_distinct_images(planted, tmp_path):
    s = dedup_source(planted["spec"], tmp_path / "d.jsonl", scores=planted["scores"], eps=0.02, features="pixels")
    rem = read_removals(s["removals_file"])
    pairs = {frozenset((r["id"], r["duplicate_of"])) for r in rem if "duplicate_of" in r}
    for c in planted["copies"]:
        assert frozenset((c["id"], c["_of"])) in pairs, c["_kind"]  # every copy found ...
    assert len(pairs) == len(planted["copies"])  # ... and no distinct image removed
    assert {r["id"]: r["reasons"] for r in rem if "duplicate_of" not in r} == {
        "truncated": ["unreadable:truncated"], "not-image": ["unreadable:not_an_image"]}  # left out, said why
    assert not s["warnings"]
    kept = open_source(f"jsonl:{tmp_path / 'd.jsonl'}")
    assert len(kept) == s["samples_kept"] == planted["n"] - len(planted["copies"]) - 2  # 2 unreadable
    counts = [s["near_removed_at_eps"][k] for k in sorted(s["near_removed_at_eps"], key=float)]
    assert counts == sorted(counts)  # a larger eps never removes fewer


def test_dedup_with_a_model_embeds_through_the_score_job(planted, tmp_path):
    out = tmp_path / "d.jsonl"
    s = dedup_source(planted["spec"], out, model="tiny", eps=0.0, features="model", precision="fp32")
    assert s["removed_by_reason"] == {"exact_duplicate": 2, "unreadable:not_an_image": 1, "unreadable:truncated": 1}
    assert s["samples_kept"] + s["samples_removed"] == s["samples_in"]
    assert (tmp_path / "d.images.parquet").exists() and s["scores"].endswith("d.images.parquet")
    with pytest.raises(UsageError, match="`model`"):
        dedup_source(planted["spec"], out, eps=0.05)
    with pytest.raises(UsageError, match="`keep`"):
        dedup_source(planted["spec"], out, scores=planted["scores"], keep="last")


def test_an_eps_that_swallows_distinct_images_is_warned_about(planted, tmp_path):
    s = dedup_source(planted["spec"], tmp_path / "d.jsonl", scores=planted["scores"], eps=0.6, features="pixels")
    assert s["samples_removed"] > 0.3 * s["samples_in"]
    assert len(s["warnings"]) == 1 and "smaller `eps`" in s["warnings"][0]


def _clusters(n_groups=40, per=3, d=32, spread=0.01, seed=0):
    """Unit vectors in tight groups (cosine within a group > 0.99) far apart from each other."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, d))
    x = np.repeat(centres, per, 0) + spread * rng.normal(size=(n_groups * per, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(n_groups), per)


def test_range_search_and_semdedup_agree_with_brute_force():
    x, group = _clusters()
    sims = x @ x.T
    want = {(i, j) for i, j in zip(*np.nonzero(np.triu(sims >= 0.98, 1)))}
    r = candidate_pairs(x, 0.02, "range")
    assert set(zip(r.i.tolist(), r.j.tolist())) == want
    np.testing.assert_allclose(r.sim, sims[r.i, r.j], atol=1e-5)
    s = candidate_pairs(x, 0.02, "semdedup", n_clusters=8)
    assert set(zip(s.i.tolist(), s.j.tolist())) <= want and len(s.i) >= 0.9 * len(want)
    assert all(group[i] == group[j] for i, j in want)


def test_keep_rule_keeps_the_most_central_member():
    x, group = _clusters(n_groups=10, per=4)
    pairs = candidate_pairs(x, 0.05, "range")
    removed = keep_greedy(x, pairs)
    kept = [r for r in range(len(x)) if r not in removed]
    assert sorted(group[kept].tolist()) == list(range(10))  # one per group
    for g in range(10):
        members = np.flatnonzero(group == g)
        centre = x[members].mean(0)
        centre /= np.linalg.norm(centre)
        # the documented rule: centrality to 6 decimals (float noise is no preference), ties to the first row;
        # unrounded, two members 1e-7 apart order differently on different CPUs' BLAS (AVX-512 vs AVX2)
        assert kept[g] == members[np.argmax(np.round(x[members] @ centre, 6))]
    assert all(group[r] == group[k] for r, (k, _) in removed.items())
    first = keep_greedy(x, pairs, priority=-np.arange(len(x), dtype=np.float64))
    assert sorted(set(range(len(x))) - set(first)) == [g * 4 for g in range(10)]  # "first": source order


def test_exact_duplicates_and_eps_counts():
    assert exact_duplicates(["a", "b", "a", None, None, "b", "a"], -np.arange(7.0)) == {2: 0, 5: 1, 6: 0}
    assert exact_duplicates(["a", "a"], np.array([0.1, 0.9])) == {0: 1}
    x, _ = _clusters(n_groups=5, per=3)
    removed, counts, method = near_duplicates(x, 0.05, eps_report=(0.0001, 0.05, 0.5))
    assert method == "range" and counts[0.05] == len(removed) == 10 and counts[0.0001] <= 10 <= counts[0.5]
    with pytest.raises(UsageError, match="`eps`"):
        candidate_pairs(x, 1.5)
