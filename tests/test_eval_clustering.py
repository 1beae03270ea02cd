"""The clustering task (MIEB protocol): k-means with k = classes, NMI / ARI / accuracy against the labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import normalized_mutual_info_score

from clipforge.cli import main
from clipforge.data.sources import open_source
from clipforge.errors import UsageError
from clipforge.evaluate.clustering import cluster_scores
from clipforge.models import load_model


def _blobs(spread: float, seed: int = 0):
    """Four classes of 30 points around orthogonal unit directions in 8-D, with Gaussian `spread`."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 30)
    x = np.eye(8)[y] + spread * rng.normal(size=(len(y), 8))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


@pytest.mark.parametrize("kmeans", ["minibatch", "full"])
def test_well_separated_classes_score_one_and_shuffled_labels_score_near_zero(kmeans):
    x, y = _blobs(0.02)
    res = cluster_scores(x, y, seeds=(0, 1, 2), kmeans=kmeans)
    assert res["k"] == 4 and res["n"] == 120 and len(res["per_seed"]) == 3
    assert res["nmi"] == pytest.approx(1.0) and res["ari"] == pytest.approx(1.0)
    assert res["cluster_accuracy"] == pytest.approx(1.0) and res["nmi_std"] == pytest.approx(0.0)
    shuffled = np.random.default_rng(1).permutation(y)  # the same clusters, labels that ignore them
    bad = cluster_scores(x, shuffled, seeds=(0,), kmeans=kmeans)
    assert bad["nmi"] < 0.15 and abs(bad["ari"]) < 0.1 and bad["cluster_accuracy"] < 0.5


def test_renamed_labels_do_not_matter_and_noise_lowers_the_score():
    x, y = _blobs(0.02)
    assert cluster_scores(x, (y + 1) % 4 * 10)["nmi"] == pytest.approx(1.0)  # label ids are names only
    assert cluster_scores(*_blobs(0.6))["nmi"] < cluster_scores(*_blobs(0.05))["nmi"]


def test_one_class_or_too_few_images_is_refused():
    with pytest.raises(UsageError, match="two classes"):
        cluster_scores(np.eye(3), [0, 0, 0])
    with pytest.raises(UsageError, match="more images"):
        cluster_scores(np.eye(2), [0, 1])


def test_the_task_from_the_cli_matches_minibatch_kmeans_by_hand(ckpt, digits_demo, tmp_path):
    spec = f"imagefolder:{digits_demo['val_dir']}"
    out = tmp_path / "r.jsonl"
    assert main(["eval", "-m", ckpt, "--task", "clustering", "-d", spec, "--cluster-seeds", "0,1",
                 "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    model, src = load_model(ckpt).eval(), open_source(spec)
    with torch.no_grad():
        feats = model.encode_image(torch.stack([model.preprocess(src[i].image) for i in range(len(src))])).numpy()
    y = np.array([src[i].label for i in range(len(src))])
    nmi = [normalized_mutual_info_score(y, MiniBatchKMeans(10, batch_size=500, n_init="auto", random_state=s)
                                        .fit_predict(feats.astype(np.float64))) for s in (0, 1)]
    assert rec["metrics"]["k"] == 10 and rec["metrics"]["n"] == len(y)
    assert rec["metrics"]["nmi"] == pytest.approx(np.mean(nmi), abs=1e-6)
    assert rec["config"]["cluster_seeds"] == [0, 1] and rec["config"]["kmeans"] == "minibatch"
