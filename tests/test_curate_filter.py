"""Filtering: per-caption and per-image rules with their reasons, quantile and calibrated thresholds, every
removal recorded, and the output a valid source for `train` and `index build`."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from clipforge.curate import (KNOWN_THRESHOLDS, FilterRules, calibrate_threshold, decide, filter_source,
                              quantile_threshold, read_removals, score_source)
from clipforge.curate.score import SCHEMA
from clipforge.data.sources import open_source
from clipforge.encode import Encoder
from clipforge.errors import UsageError
from curate_fixtures import broken_rows, digits_rows, write_manifest


def _table(rows: list[dict]) -> pa.Table:
    """A scores table from partial rows (missing columns are null)."""
    full = [{f.name: r.get(f.name) for f in SCHEMA} for r in rows]
    return pa.Table.from_pylist(full, schema=SCHEMA)


def _pair(sid, pos, k, score, cap="a photo of a cat", w=64, h=64, nbytes=9000):
    return {"id": sid, "position": pos, "caption_index": k, "caption": cap, "score": score, "width": w,
            "height": h, "aspect": max(w, h) / min(w, h), "file_bytes": nbytes, "caption_chars": len(cap),
            "caption_words": len(cap.split())}


def test_caption_rules_remove_captions_then_samples():
    t = _table([_pair("a", 0, 0, 0.35), _pair("a", 0, 1, 0.10, "wrong"),           # loses one caption
                _pair("b", 1, 0, 0.12), _pair("b", 1, 1, 0.20, "cat"),             # loses both
                _pair("c", 2, 0, 0.40, w=400, h=40),                               # aspect 10
                _pair("d", 3, 0, 0.40, w=20, h=30, nbytes=900),                    # small, small file
                {"id": "e", "position": 4, "caption_index": -1, "width": 64, "height": 64, "aspect": 1.0,
                 "file_bytes": 9000},
                {"id": "f", "caption_index": -1, "skip_reason": "truncated"}])
    kept, removals, how = decide(t, FilterRules(min_score=0.28, min_caption_chars=5, max_aspect=4, min_side=32,
                                                min_file_bytes=5000))
    assert how["threshold"] == 0.28 and kept == {0: [0]}
    rec = {r["id"]: r for r in removals}
    assert rec["a"]["removed"] == "captions" and rec["a"]["reasons"] == ["low_score"]
    assert [(c["index"], c["reasons"]) for c in rec["a"]["captions"]] == [(1, ["low_score"])]
    assert rec["b"]["removed"] == "sample" and rec["b"]["reasons"] == ["low_score", "short_caption"]
    assert rec["c"]["reasons"] == ["aspect_ratio"] and rec["d"]["reasons"] == ["small_image", "small_file"]
    assert rec["e"]["reasons"] == ["no_caption"] and rec["f"]["reasons"] == ["unreadable:truncated"]
    assert [r["id"] for r in removals] == ["a", "b", "c", "d", "e", "f"]  # source order
    kept2, _, _ = decide(t, FilterRules(keep_uncaptioned=True))
    assert 4 in kept2 and kept2[4] == []


def test_keep_top_and_quantile_threshold():
    rng = np.random.default_rng(0)
    scores = rng.normal(0.25, 0.05, 1000)
    for f in (0.1, 0.5, 0.7, 1.0):
        t = quantile_threshold(scores, f)
        assert (scores >= t).sum() == int(np.ceil(f * 1000))
    t = _table([_pair(f"s{i}", i, 0, float(s)) for i, s in enumerate(scores[:100])])
    kept, removals, how = decide(t, FilterRules(keep_top=0.7))
    assert len(kept) == 70 and how["rule"] == "keep_top"
    assert all(r["reasons"] == ["low_score"] and r["score"] < how["threshold"] for r in removals)


def test_calibration_matches_the_kept_fraction():
    """A new model whose scores are a monotone transform of the reference's keeps exactly the same pairs."""
    rng = np.random.default_rng(1)
    ref = {(f"s{i}", 0): float(s) for i, s in enumerate(rng.normal(0.27, 0.04, 500))}
    new = {k: 0.5 * v ** 3 + 0.01 for k, v in ref.items()}
    cal = calibrate_threshold(ref, 0.28, new)
    kept_ref = {k for k, v in ref.items() if v >= 0.28}
    kept_new = {k for k, v in new.items() if v >= cal["threshold"]}
    assert kept_new == kept_ref and cal["kept_fraction"] == len(kept_ref) / 500 and cal["pairs"] == 500
    with pytest.raises(UsageError, match="share no"):
        calibrate_threshold(ref, 0.28, {("x", 0): 0.3})


def test_rule_errors_name_parameters():
    t = _table([_pair("a", 0, 0, 0.3)])
    for rules, needle in [(FilterRules(min_score=0.3, keep_top=0.5), "`min_score` and `keep_top`"),
                          (FilterRules(min_score=2), "`min_score` must be a cosine"),
                          (FilterRules(min_score="laion9"), "laion2b-en"),
                          (FilterRules(calibrate="x.parquet"), "`ref_threshold`"),
                          (FilterRules(max_aspect=0.5), "`max_aspect`"),
                          (FilterRules(languages=["en"]), "language guess"),
                          (FilterRules(keep_top=1.5), "`keep_top`")]:
        with pytest.raises(UsageError, match=needle):
            decide(t, rules)
    assert KNOWN_THRESHOLDS["laion2b-en"][0] == 0.28 and KNOWN_THRESHOLDS["laion2b-multi"][0] == 0.26
    assert decide(t, FilterRules(min_score="laion2b-en"))[2]["threshold"] == 0.28


@pytest.fixture(scope="module")
def scored(digits_demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("filter")
    rows = digits_rows(digits_demo, 16)
    spec = write_manifest(root / "pairs.jsonl", rows + broken_rows(root / "broken"))
    enc = Encoder.load("tiny", precision="fp32")
    score_source(spec, enc, root / "scores.parquet", progress=False)
    return {"spec": spec, "rows": rows, "root": root, "scores": root / "scores.parquet"}


def test_every_removal_recorded_and_output_is_a_source(scored):
    out = scored["root"] / "out" / "clean.jsonl"
    s = filter_source(scored["spec"], scored["scores"], out, keep_top=0.5, min_caption_chars=20)
    kept = open_source(f"jsonl:{out}")
    removals = read_removals(s["removals_file"])
    dropped = {r["id"] for r in removals if r["removed"] == "sample"}
    all_ids = {open_source(scored["spec"])[i].id for i in range(len(open_source(scored["spec"])))}
    assert {kept[i].id for i in range(len(kept))} | dropped == all_ids  # nothing vanishes unrecorded
    assert not {kept[i].id for i in range(len(kept))} & dropped
    assert {"truncated", "not-image", "uncaptioned"} <= dropped
    orig = {r["id"]: r["captions"] for r in scored["rows"]}
    lost = {r["id"]: {c["text"] for c in r["captions"]} for r in removals}
    for i in range(len(kept)):
        smp = kept[i]
        assert smp.captions and set(smp.captions) == set(orig[smp.id]) - lost.get(smp.id, set())
        assert smp.label is not None and smp.load_image().size == (32, 32)  # labels kept, images readable
    summary = json.loads(open(s["summary_file"]).read())
    assert summary["samples_kept"] == len(kept) and summary["pairs_kept"] == sum(len(kept[i].captions)
                                                                               for i in range(len(kept)))
    assert set(summary["pairs_removed_by_reason"]) == {"low_score", "short_caption"}


def test_filtered_output_trains_and_indexes(scored, tmp_path):
    from clipforge.retrieval.build import build_index
    from clipforge.train import load_config, train

    out = tmp_path / "clean.jsonl"
    s = filter_source(scored["spec"], scored["scores"], out, keep_top=0.8)
    cfg = load_config(None, [f"data.train=jsonl:{out}", "model.name=tiny", "data.batch_size=4", "data.workers=0",
                             "run.steps=2", "run.log_every=1", "run.checkpoint_every=2", "run.progress=false"])
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 2 and summary["skipped"]["total"] == 0
    idx = build_index(f"jsonl:{out}", "tiny", tmp_path / "idx", progress=False)
    assert idx["count"] == s["samples_kept"] and idx["skipped"]["total"] == 0


def test_shards_output_and_dedup_removals_applied(scored, tmp_path):
    fake = tmp_path / "dups.removals.jsonl"
    victim = scored["rows"][3]["id"]
    fake.write_text(json.dumps({"id": victim, "removed": "sample", "reasons": ["near_duplicate"], "captions": [],
                                "duplicate_of": scored["rows"][2]["id"], "similarity": 0.99}) + "\n")
    s = filter_source(scored["spec"], scored["scores"], tmp_path / "shards", to="wds", also_remove=[str(fake)],
                      shard_size=5)
    src = open_source(f"wds:{tmp_path / 'shards'}")
    ids = {src[i].id for i in range(len(src))}
    assert victim not in ids and len(ids) == s["samples_kept"] == 15
    rec = {r["id"]: r for r in read_removals(tmp_path / "shards" / "removals.jsonl")}
    assert rec[victim]["reasons"] == ["near_duplicate"] and rec[victim]["duplicate_of"] == scored["rows"][2]["id"]
    with pytest.raises(UsageError, match="scores cover"):
        filter_source(write_manifest(tmp_path / "other.jsonl", scored["rows"][:3]), scored["scores"],
                      tmp_path / "x.jsonl")


def test_languages_keep_unknown_by_default_and_drop_it_on_request():
    from clipforge.curate.score import schema_for

    schema = schema_for(lang=True, embed_dim=None, pixel_features=False)
    rows = [{**_pair("a", 0, 0, 0.3, "a photo of a cat on a sofa"), "lang": "en", "lang_prob": 0.99},
            {**_pair("b", 1, 0, 0.3, "a handwritten nine."), "lang": "unknown", "lang_prob": 0.09},
            {**_pair("c", 2, 0, 0.3, "une photo d'un chat roux"), "lang": "fr", "lang_prob": 0.97},
            {**_pair("d", 3, 0, 0.3, "7"), "lang": None, "lang_prob": None}]
    t = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    kept, removals, _ = decide(t, FilterRules(languages=["en"]))
    assert sorted(kept) == [0, 1, 3] and [r["id"] for r in removals] == ["c"]
    kept, removals, _ = decide(t, FilterRules(languages=["en"], keep_unknown_language=False))
    assert sorted(kept) == [0] and sorted(r["id"] for r in removals) == ["b", "c", "d"]
    assert all(r["reasons"] == ["language"] for r in removals)
