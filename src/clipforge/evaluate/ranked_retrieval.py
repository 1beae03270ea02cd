"""Text-to-image retrieval with ranked-list metrics (INQUIRE's Fullrank protocol) on a collection.

Each text query ranks every readable image of the dataset; the relevant images are
- with `queries` (a JSONL file, one {"query": "text", "relevant": [sample ids]} per line): the listed ids;
- otherwise, one query per class of a labelled dataset: the class's prompt ensemble (its `templates`, as in
  zero-shot classification), relevant = the images of that class.

Metrics: AP@k, nDCG@k and MRR within the top `cutoff` (default 50; `clipforge.metrics.retrieval`), and mAP
over the whole ranking (the macro mean of each query's average precision, `multilabel_map`). Relevant ids
that are not among the readable images are left out of each query's positives and counted
(`unmatched_relevant`), so a broken file does not count as a retrieval miss; queries without any readable
relevant image are left out and counted (`queries_without_relevant`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clipforge.errors import UsageError
from clipforge.evaluate.tasks import CUTOFF, TASKS, EvalTask, TaskResult
from clipforge.metrics.classification import multilabel_map
from clipforge.metrics.retrieval import fullrank_metrics
from clipforge.registry import Option
from clipforge.zeroshot.classnames import resolve_classnames
from clipforge.zeroshot.zeroshot_head import build_classifier, model_text_encoder
from clipforge.zeroshot.methods import TEMPLATES

__all__ = ["read_queries", "evaluate_ranked_retrieval", "RankedRetrieval"]

DEFAULT_CUTOFF = 50


def read_queries(path) -> list[tuple[str, list[str]]]:
    """[(query text, relevant sample ids)] from a JSONL file of {"query": ..., "relevant": [...]}."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"queries file not found: {p}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{p.name} line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not row["query"].strip() \
                or not isinstance(row.get("relevant"), list):
            raise UsageError(f'{p.name} line {n}: expected {{"query": "text", "relevant": [ids]}}')
        out.append((row["query"], [str(r) for r in row["relevant"]]))
    if not out:
        raise UsageError(f"{p.name}: no queries")
    return out


def evaluate_ranked_retrieval(encoder, source, *, queries=None, classnames=None, templates=None,
                              cutoff: int = DEFAULT_CUTOFF, batch_size: int = 256, workers: int = 0,
                              progress: Optional[bool] = None) -> dict:
    """-> {"metrics": {AP@k, nDCG@k, MRR, mAP, n_queries}, "num_images", "num_queries", "unmatched_relevant",
    "queries_without_relevant", "skipped", "templates_hash"}."""
    if cutoff < 1:
        raise UsageError(f"`cutoff` must be >= 1, got {cutoff}")
    feats = encoder.encode_source(source, batch_size, workers=workers, require=None if queries else "label",
                                  progress=progress, desc="retrieval images")
    if len(feats) == 0:
        raise UsageError(f"{source.spec}: no readable images")
    templates_hash = None
    if queries is not None:
        rows = read_queries(queries)
        q_emb = encoder.encode_texts([q for q, _ in rows], batch_size, progress=progress)  # (Q, D)
        where = {sid: i for i, sid in enumerate(feats.ids)}
        relevant = [[where[r] for r in dict.fromkeys(rel) if r in where] for _, rel in rows]
        unmatched = sum(len(set(rel)) for _, rel in rows) - sum(len(r) for r in relevant)
        n_all = len(rows)
    else:
        names = resolve_classnames(source, classnames)
        head = build_classifier(model_text_encoder(encoder, batch_size), names, templates, progress=progress)
        q_emb, templates_hash = head.weights, head.meta.get("templates_hash")  # (C, D) unit class vectors
        labels = feats.label_tensor().numpy()
        relevant = [np.flatnonzero(labels == c).tolist() for c in range(len(names))]
        unmatched, n_all = 0, len(names)
    keep = [i for i, r in enumerate(relevant) if r]
    if not keep:
        raise UsageError(f"{source.spec}: no query has a readable relevant image")
    q_emb, relevant = q_emb[keep], [relevant[i] for i in keep]
    metrics = {k: v for k, v in fullrank_metrics(q_emb, feats.feats, relevant, k=cutoff).items() if k != "per_query"}
    y_true = np.zeros((len(feats), len(keep)), dtype=np.int8)  # (N, Q) relevance
    for j, r in enumerate(relevant):
        y_true[r, j] = 1
    scores = (feats.feats @ torch.as_tensor(q_emb).float().T).numpy()  # (N, Q)
    metrics["mAP"] = multilabel_map(y_true, scores)[0]
    return {"metrics": metrics, "num_images": len(feats), "num_queries": len(keep),
            "unmatched_relevant": int(unmatched), "queries_without_relevant": n_all - len(keep),
            "skipped": feats.skipped.as_dict(), "templates_hash": templates_hash}


@TASKS.register("ranked-retrieval")
class RankedRetrieval(EvalTask):
    """Text->image ranking (INQUIRE Fullrank): AP@k, nDCG@k, MRR and full-ranking mAP."""

    options = (Option("queries", str, help='ranked retrieval: JSONL of {"query": text, "relevant": [ids]} '
                      "(default: one query per class of a labelled dataset)"),
               Option(CUTOFF.name, int, DEFAULT_CUTOFF, help=CUTOFF.help),
               Option("classnames", str, help="class names file (default: the dataset's)"),
               TEMPLATES)

    def run(self, encoder, dataset, ctx, *, queries=None, cutoff=DEFAULT_CUTOFF, classnames=None,
            templates=None) -> TaskResult:
        if queries is not None and (classnames is not None or templates is not None):
            raise UsageError("`queries` gives the query texts; `classnames` / `templates` build class queries "
                             "instead: give one or the other")
        if queries is None and templates is None:
            templates = dataset.templates
        res = evaluate_ranked_retrieval(encoder, dataset.source, queries=queries,
                                        classnames=classnames or dataset.classnames, templates=templates,
                                        cutoff=cutoff, batch_size=ctx.batch_size, workers=ctx.workers,
                                        progress=ctx.progress)
        config = {"queries": str(queries) if queries else "classes", "cutoff": cutoff,
                  "templates": templates if isinstance(templates, str) or templates is None
                  else f"{len(templates)} templates"}
        extra = {k: res[k] for k in ("num_images", "num_queries", "unmatched_relevant", "queries_without_relevant",
                                     "skipped")}
        return TaskResult(res["metrics"], config, extra, res["templates_hash"])
