"""clipforge.curate: score, filter and de-duplicate image-text pairs, and report what was removed.

    from clipforge.curate import score_source, filter_source, dedup_source, write_report
    score_source("jsonl:pairs.jsonl", "ckpt/final", "scores.parquet")          # resumable, one row per pair
    filter_source("jsonl:pairs.jsonl", "scores.parquet", "clean.jsonl", min_score=0.28, min_caption_chars=5)
    dedup_source("jsonl:clean.jsonl", "dedup.jsonl", scores="scores.parquet", eps=0.05)
    write_report(["clean.summary.json", "dedup.summary.json"], "report/")

Every output is an ordinary source (a manifest or webdataset shards) with a removals file naming each removed
sample or caption and why. `score_batch(encoder, batch)` is the per-batch unit a scale-out engine calls.
"""
from clipforge.curate.calibrate import (KNOWN_THRESHOLDS, calibrate_threshold, estimate_mismatch_rate,
                                        quantile_threshold)
from clipforge.curate.dedup import dedup_source, exact_duplicates, near_duplicates
from clipforge.curate.facts import caption_facts, image_facts, pixel_descriptor
from clipforge.curate.filter import FilterRules, decide, filter_source
from clipforge.curate.job import read_scores, score_source, scores_info
from clipforge.curate.near import candidate_pairs, keep_greedy
from clipforge.curate.report import write_report
from clipforge.curate.score import score_batch
from clipforge.curate.selection import Selection, read_removals

__all__ = ["score_source", "score_batch", "read_scores", "scores_info", "filter_source", "FilterRules", "decide",
           "dedup_source", "exact_duplicates", "near_duplicates", "candidate_pairs", "keep_greedy",
           "KNOWN_THRESHOLDS", "calibrate_threshold", "estimate_mismatch_rate", "quantile_threshold", "image_facts",
           "caption_facts", "pixel_descriptor", "Selection", "read_removals", "write_report"]
