"""The `clustering` task: k-means on the image embeddings of a labelled set, scored against the labels (MIEB).

MIEB's image clustering protocol (MTEB's `ImageClusteringEvaluator`): the image embeddings (L2-normalised
here) are clustered by scikit-learn's `MiniBatchKMeans(n_clusters=k, batch_size=500, n_init="auto")` with k =
the number of classes present, and the clusters compared with the labels by normalised mutual information
(`normalized_mutual_info_score`, arithmetic normalisation; equal to `v_measure_score`, which MIEB also reports),
the adjusted Rand index (`adjusted_rand_score`) and the clustering accuracy (the best one-to-one matching of
clusters to classes, Hungarian assignment on the confusion matrix). MIEB leaves k-means unseeded; clipforge
passes `random_state` = each of `seeds` (default one seed, 0) so a rerun gives the same numbers, and reports
the mean and standard deviation over the seeds (`nmi`, `nmi_std`, ...) with the per-seed values in `per_seed`.
`kmeans="full"` uses Lloyd's `KMeans` instead (`n_init` starts; "auto" = 1 with k-means++). NMI, ARI and
accuracy are 1 for a clustering equal to the labels up to renaming; NMI and ARI are about 0 for a random one.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import adjusted_rand_score, confusion_matrix, normalized_mutual_info_score, v_measure_score

from clipforge.encode import as_encoder
from clipforge.errors import UsageError
from clipforge.evaluate.tasks import TASKS, EvalTask, TaskResult
from clipforge.registry import Option

__all__ = ["cluster_scores", "evaluate_clustering", "Clustering"]


KMEANS = ("minibatch", "full")
MIEB_BATCH = 500  # MIEB's clustering_batch_size


def _kmeans(kind: str, k: int, n_init, seed: int):
    if kind == "minibatch":
        return MiniBatchKMeans(n_clusters=k, batch_size=MIEB_BATCH, n_init=n_init, random_state=seed)
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed)


def cluster_scores(features, labels, *, seeds=(0,), kmeans: str = "minibatch", n_init="auto") -> dict:
    """k-means (k = distinct labels) on `features` (N, D) -> {nmi, nmi_std, ari, ari_std, v_measure,
    cluster_accuracy (+ _std), k, n, per_seed}."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    k = len(np.unique(y))
    if k < 2:
        raise UsageError(f"clustering needs at least two classes among the labelled images, got {k}")
    if len(y) <= k:
        raise UsageError(f"clustering needs more images ({len(y)}) than classes ({k})")
    if kmeans not in KMEANS:
        raise UsageError(f"`kmeans` must be one of {', '.join(KMEANS)}, got {kmeans!r}")
    if not (n_init == "auto" or isinstance(n_init, int) and n_init >= 1) or not seeds:
        raise UsageError(f"`n_init` must be 'auto' or >= 1 and `seeds` non-empty (got {n_init!r}, {list(seeds)})")
    per_seed = []
    for seed in seeds:
        pred = _kmeans(kmeans, k, n_init, int(seed)).fit_predict(x)
        cm = confusion_matrix(y, pred)
        rows, cols = linear_sum_assignment(cm, maximize=True)
        per_seed.append({"seed": int(seed), "nmi": float(normalized_mutual_info_score(y, pred)),
                         "ari": float(adjusted_rand_score(y, pred)), "v_measure": float(v_measure_score(y, pred)),
                         "cluster_accuracy": float(cm[rows, cols].sum() / len(y))})
    out: dict = {}
    for name in ("nmi", "ari", "v_measure", "cluster_accuracy"):
        vals = [s[name] for s in per_seed]
        out[name], out[f"{name}_std"] = float(np.mean(vals)), float(np.std(vals))
    return {**out, "k": k, "n": len(y), "per_seed": per_seed}


def evaluate_clustering(model, source, *, seeds=(0,), kmeans: str = "minibatch", n_init="auto", batch_size: int = 256, workers: int = 0,
                        progress: Optional[bool] = None) -> dict:
    """Embed every readable labelled image of `source` and score k-means on it (`cluster_scores`).
    -> {"metrics": {nmi, ari, v_measure, cluster_accuracy (each with _std), k, n}, "per_seed", "skipped"}."""
    encoder = as_encoder(model)
    feats = encoder.encode_source(source, batch_size, workers=workers, require="label", progress=progress,
                                  desc="clustering")
    if len(feats) == 0:
        raise UsageError(f"{source.spec}: no readable labelled images")
    res = cluster_scores(feats.feats.numpy(), feats.label_tensor().numpy(), seeds=seeds, kmeans=kmeans,
                         n_init=n_init)
    per_seed = res.pop("per_seed")
    return {"metrics": res, "per_seed": per_seed, "skipped": feats.skipped.as_dict()}


def _seed_list(value) -> list[int]:
    if isinstance(value, str):
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"`cluster_seeds` must be comma-separated integers, got {value!r}") from None
    return [int(v) for v in value]


@TASKS.register("clustering")
class Clustering(EvalTask):
    """k-means on image embeddings with k = number of classes; NMI and ARI against the labels (MIEB)."""

    options = (Option("cluster_seeds", str, "0", help="clustering: k-means seeds, comma-separated (default 0); "
                                                      "mean and std over them"),
               Option("kmeans", str, "minibatch", choices=KMEANS,
                      help="clustering: minibatch (MIEB: MiniBatchKMeans, batch 500) or full (Lloyd's KMeans)"),
               Option("n_init", str, "auto", help="clustering: k-means starts per seed, or auto (default; "
                                                  "scikit-learn's rule, as MIEB)"))

    def run(self, encoder, dataset, ctx, *, cluster_seeds="0", kmeans="minibatch", n_init="auto") -> TaskResult:
        seeds = _seed_list(cluster_seeds)
        starts = _n_init(n_init)
        res = evaluate_clustering(encoder, dataset.source, seeds=seeds, kmeans=kmeans, n_init=starts,
                                  batch_size=ctx.batch_size, workers=ctx.workers, progress=ctx.progress)
        return TaskResult(res["metrics"], {"cluster_seeds": seeds, "kmeans": kmeans, "n_init": starts},
                          {"per_seed": res["per_seed"], "skipped": res["skipped"]})


def _n_init(value):
    if value == "auto" or isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"`n_init` must be 'auto' or a positive integer, got {value!r}") from None
