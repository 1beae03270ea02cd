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
    copies = plant_copies(rows, root / "copies", kinds=("bytes", "pixels", "upscale", "downscale", "jpeg", "shift"))
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


def _dup_pairs(summary) -> set:
    return {frozenset((r["id"], r["duplicate_of"])) for r in read_removals(summary["removals_file"])
            if "duplicate_of" in r}


def test_a_copy_shifted_by_a_pixel_is_found_only_by_the_aligned_comparison(planted, tmp_path):
    """The 16x16 descriptor puts a one-pixel shift of a 32-pixel digit as far away as a distinct digit; the
    aligned grid comparison finds it, and a scores file without grids (older ones) still works without it."""
    import pyarrow.parquet as pq

    from clipforge.curate.shifted import SHIFT_STRICT, grid_descriptors, shifted_pairs

    shift = next(c for c in planted["copies"] if c["_kind"] == "shift")
    s = dedup_source(planted["spec"], tmp_path / "d.jsonl", scores=planted["scores"])
    assert frozenset((shift["id"], shift["_of"])) in _dup_pairs(s)
    assert s["method"] == "range+shifted"
    table = pq.read_table(planted["scores"])
    first = {}
    for i, g, f in zip(*(table.column(c).to_pylist() for c in ("id", "pixel_grid", "pixel_feat"))):
        if g is not None:
            first.setdefault(i, (np.array(g, np.uint8), np.array(f, np.float32)))
    (ga, fa), (gb, fb) = first[shift["id"]], first[shift["_of"]]
    unaligned = 1 - float(fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb))
    aligned = min(1 - float(grid_descriptors(ga[None], dx, 0)[0] @ grid_descriptors(gb[None])[0]) for dx in (-1, 1))
    assert unaligned > 0.03 and aligned < 0.002  # far as an unshifted descriptor, near-exact once aligned
    p = shifted_pairs(np.stack([ga, gb]), 0.02)
    assert len(p.i) == 1 and 1 - p.sim[0] == pytest.approx(aligned / SHIFT_STRICT, abs=1e-4)
    old = tmp_path / "old.parquet"  # a scores file written before grids were kept
    pq.write_table(table.drop(["pixel_grid"]).replace_schema_metadata(table.schema.metadata), old)
    for scores, method, found in ((planted["scores"], "range+shifted", True), (old, "range", False)):
        r = dedup_source(planted["spec"], tmp_path / f"{method}.jsonl", scores=scores, eps=0.02)
        assert r["method"] == method and (frozenset((shift["id"], shift["_of"])) in _dup_pairs(r)) == found


def test_an_eps_that_swallows_distinct_images_is_warned_about(planted, tmp_path):
    s = dedup_source(planted["spec"], tmp_path / "d.jsonl", scores=planted["scores"], eps=0.6, features="pixels",
                     max_removed=1.0)
    assert s["samples_removed"] > 0.3 * s["samples_in"]
    assert len(s["warnings"]) == 1 and "smaller `eps`" in s["warnings"][0]


def test_an_eps_that_would_remove_most_images_is_refused_and_writes_nothing(planted, tmp_path):
    out = tmp_path / "d.jsonl"
    with pytest.raises(UsageError, match=r"would remove \d+ of \d+ images .* more than `max_removed` 0.5") as e:
        dedup_source(planted["spec"], out, scores=planted["scores"], eps=0.6, features="pixels")
    assert "0.01: " in str(e.value)  # the counts at other radii, to choose from
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="`max_removed`"):
        dedup_source(planted["spec"], out, scores=planted["scores"], max_removed=1.5)
    with pytest.raises(UsageError, match="`eps`"):
        dedup_source(planted["spec"], out, scores=planted["scores"], eps="big")


def test_the_default_radius_is_measured_and_removes_exactly_the_planted_copies(planted, tmp_path):
    """No eps, no features given: exact steps, then the pixel descriptor at a radius measured on the data."""
    s = dedup_source(planted["spec"], tmp_path / "d.jsonl", scores=planted["scores"])
    assert s["features"] == "pixels" and s["eps_auto"]["eps"] == s["eps"] > 0
    assert s["eps"] == pytest.approx(0.1 * s["eps_auto"]["scale"], abs=1e-6)
    rem = read_removals(s["removals_file"])
    found = {frozenset((r["id"], r["duplicate_of"])) for r in rem if "duplicate_of" in r}
    assert found == {frozenset((c["id"], c["_of"])) for c in planted["copies"]}
    assert not s["warnings"]


def _cloud(scale: float, n: int = 300, copies: int = 30, d: int = 32, seed: int = 0):
    """n distinct unit vectors spread `scale` around one direction (a weak model's embeddings: small `scale`), and
    a copy of each of the first `copies`, moved 2% of `scale` (a resized or re-encoded image)."""
    rng = np.random.default_rng(seed)
    x = np.eye(d)[0] + scale * rng.normal(size=(n, d))
    x = np.concatenate([x, x[:copies] + 0.02 * scale * rng.normal(size=(copies, d))])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), {(n + c, c) for c in range(copies)}


def test_the_measured_radius_follows_the_features_scale():
    """The same layout at two scales: the old fixed radius (0.05) fits one of them only; the measured one finds the
    copies at both."""
    from clipforge.curate.radius import auto_eps

    fixed_ok = []
    for scale in (0.01, 0.3):
        x, planted = _cloud(scale)
        a = auto_eps(x)
        removed, _, _ = near_duplicates(x, a["eps"], priority=-np.arange(len(x), dtype=np.float64))
        assert {(r, k) for r, (k, _) in removed.items()} == planted, scale
        fixed, _, _ = near_duplicates(x, 0.05, priority=-np.arange(len(x), dtype=np.float64))
        fixed_ok.append({(r, k) for r, (k, _) in fixed.items()} == planted)
    assert fixed_ok.count(True) <= 1


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
