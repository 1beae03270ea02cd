"""Metrics against scikit-learn (tie-free inputs), hand-built retrieval cases, and the documented tie rule."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from clipforge.errors import UsageError
from clipforge.metrics.classification import (
    average_precision,
    classification_metrics,
    confusion_matrix,
    mean_per_class_recall,
    multilabel_map,
    predictions,
    topk_accuracy,
)
from clipforge.metrics.retrieval import (
    ap_at_k,
    fullrank_metrics,
    image_text_recall,
    ndcg_at_k,
    positive_ranks,
    reciprocal_rank,
    rerank_metrics,
    topk_blocked,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---- classification ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [3, 10, 37])
def test_topk_matches_sklearn(n_classes):
    rng = _rng(n_classes)
    scores = rng.normal(size=(300, n_classes))  # continuous: no ties
    labels = rng.integers(0, n_classes, 300)
    ours = topk_accuracy(scores, labels, ks=(1, 2, 5))
    for k in (1, 2, 5):
        if k > n_classes:
            assert f"top{k}" not in ours
        else:
            ref = skm.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(n_classes))
            assert ours[f"top{k}"] == ref


def test_topk_fewer_classes_than_k_reports_only_what_applies():
    scores = np.array([[0.2, 0.8], [0.9, 0.1], [0.4, 0.6]])
    out = classification_metrics(scores, [1, 1, 1], ks=(1, 5))
    assert set(out) == {"top1", "mean_per_class_recall", "n"}
    assert out["top1"] == pytest.approx(2 / 3)
    assert all(np.isfinite(v) for v in out.values())


def test_topk_tie_rule_lower_index_wins():
    scores = np.zeros((2, 4))  # every class tied
    assert topk_accuracy(scores, [0, 1], ks=(1, 2)) == {"top1": 0.5, "top2": 1.0}
    assert topk_accuracy(scores, [3, 3], ks=(3, 4)) == {"top3": 0.0, "top4": 1.0}
    assert predictions(np.array([[1.0, 3.0, 3.0], [np.nan, 0.0, 0.0]])).tolist() == [1, 1]


def test_balanced_accuracy_and_confusion_match_sklearn():
    rng = _rng(1)
    y_true = rng.integers(0, 6, 400)
    y_true[y_true == 4] = 5  # class 4 absent from y_true but predicted below
    y_pred = np.where(rng.random(400) < 0.6, y_true, rng.integers(0, 6, 400))
    assert (y_pred == 4).any()
    with pytest.warns(UserWarning):  # sklearn warns about the absent class; we skip it the same way
        ref = skm.balanced_accuracy_score(y_true, y_pred)
    assert mean_per_class_recall(y_true, y_pred, 6) == pytest.approx(ref, abs=1e-15)
    ref_cm = skm.confusion_matrix(y_true, y_pred, labels=range(6))
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 6), ref_cm)


def test_average_precision_matches_sklearn():
    rng = _rng(2)
    for _ in range(5):
        rel = rng.random(200) < 0.2
        scores = rng.normal(size=200) + rel
        assert average_precision(rel, scores) == pytest.approx(skm.average_precision_score(rel, scores), abs=1e-12)


def test_multilabel_map_matches_sklearn():
    rng = _rng(3)
    y = (rng.random((150, 8)) < 0.3).astype(int)
    y[0] = 1  # every class has a positive
    s = rng.normal(size=(150, 8)) + y
    ours, per_class = multilabel_map(y, s)
    assert ours == pytest.approx(skm.average_precision_score(y, s, average="macro"), abs=1e-12)
    np.testing.assert_allclose(per_class, skm.average_precision_score(y, s, average=None), atol=1e-12)


def test_average_precision_tie_rule():
    # all scores tied -> ranked by index: relevant at ranks 2 and 3 -> (1/2 + 2/3) / 2
    assert average_precision([0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_bad_labels_raise_usage_error():
    with pytest.raises(UsageError, match="labels must lie"):
        topk_accuracy(np.zeros((2, 3)), [0, 3])


# ---- image <-> text recall -----------------------------------------------------------------------------

# Images are the 4 one-hot vectors, so text j's embedding IS column j of the similarity matrix S (4 x 20).
# Texts 5i..5i+4 are the five captions of image i. Expected ranks are worked out by hand below.
_COLS = (
    [[0.9, 0.1, 0.2, 0.3]] * 5  # image 0 captions: image 0 top      -> t2i rank 1 (x5)
    + [[0.8, 0.7, 0.1, 0.0]]  # image 1 caption: 0.8 above           -> t2i rank 2
    + [[0.6, 0.5, 0.55, 0.4]] * 4  # 0.6, 0.55 above                 -> t2i rank 3 (x4)
    + [[0.0, 0.0, 0.05, 0.99]] * 5  # image 2 captions: 0.99 above   -> t2i rank 2 (x5)
    + [[0.3, 0.3, 0.3, 0.2]] * 5  # image 3 captions: all above      -> t2i rank 4 (x5)
)
# i2t, row by row (best caption of the image, count texts scoring higher):
#   row 0: captions 0.9 are the row max                                    -> rank 1
#   row 1: caption 5 scores 0.7, the row max                               -> rank 1
#   row 2: captions score 0.05; higher: 0.2 x5, 0.1, 0.55 x4, 0.3 x5 = 15  -> rank 16
#   row 3: captions score 0.2;  higher: 0.3 x5, 0.4 x4, 0.99 x5 = 14       -> rank 15


def _hand_built():
    return np.eye(4, dtype=np.float32), np.array(_COLS, dtype=np.float32), np.repeat(np.arange(4), 5)


@pytest.mark.parametrize("block_size", [None, 1, 3])
def test_recall_hand_built_five_captions(block_size):
    img, txt, t2i = _hand_built()
    out = image_text_recall(img, txt, t2i, ks=(1, 2, 5, 10), block_size=block_size)
    assert out["i2t_R@1"] == 0.5 and out["i2t_R@10"] == 0.5
    assert out["i2t_mean_rank"] == pytest.approx(33 / 4) and out["i2t_median_rank"] == 8.0  # ranks [1, 1, 15, 16]
    assert out["t2i_R@1"] == 5 / 20 and out["t2i_R@2"] == 11 / 20 and out["t2i_R@5"] == 1.0
    assert out["t2i_mean_rank"] == pytest.approx(49 / 20) and out["t2i_median_rank"] == 2.0
    assert out["i2t_n"] == 4 and out["t2i_n"] == 20


def test_recall_tie_rule_lower_id_first():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # images 0 and 1 identical
    txt = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    ranks = positive_ranks(txt, img, np.array([0, 1, 2]))
    assert ranks.tolist() == [1, 2, 1]  # caption of image 1 loses the tie to image 0
    out = image_text_recall(img, txt, [1, 0, 2], ks=(1,))
    # image 0's caption is text 1 (tied with text 0, which ranks first) -> rank 2; image 1's is text 0 -> 1
    assert out["i2t_R@1"] == pytest.approx(2 / 3)


def _brute_ranks(q, k, positives):
    s = q.astype(np.float64) @ k.T.astype(np.float64)
    order = np.argsort(-s, axis=1, kind="stable")
    rank_of = np.empty_like(order)
    np.put_along_axis(rank_of, order, np.arange(k.shape[0])[None, :], axis=1)
    return np.array([rank_of[i, p].min() + 1 for i, p in enumerate(positives)])


def _tied_data(seed):
    rng = _rng(seed)
    q = rng.normal(size=(37, 16)).astype(np.float32)
    k = rng.normal(size=(53, 16)).astype(np.float32)
    k[10] = k[3]  # exact duplicates create ties
    k[40] = k[3]
    k[20] = k[7]
    q[5] = q[6]
    return q, k


@pytest.mark.parametrize("block_size", [1, 7, 1000])
def test_blocked_equals_unblocked_and_brute_force(block_size):
    q, k = _tied_data(4)
    positives = [np.array([(3 * i) % 53, (5 * i + 10) % 53]) for i in range(37)]
    positives[0] = np.array([40, 10])  # tied positives: the lowest id counts
    ranks = positive_ranks(q, k, positives, block_size=block_size)
    np.testing.assert_array_equal(ranks, positive_ranks(q, k, positives))
    np.testing.assert_array_equal(ranks, _brute_ranks(q, k, positives))
    s, ids = topk_blocked(q, k, 12, block_size=block_size)
    s_full, ids_full = topk_blocked(q, k, 12, max_block_elems=10**9)
    np.testing.assert_array_equal(ids, ids_full)
    np.testing.assert_allclose(s, s_full, rtol=1e-6)  # float32 blocks may differ by an ulp
    s64, ids64 = topk_blocked(q, k, 12, block_size=block_size, dtype=torch.float64)
    s64_full, _ = topk_blocked(q, k, 12, max_block_elems=10**9, dtype=torch.float64)
    np.testing.assert_array_equal(s64, s64_full)  # float64: bit-identical whatever the block size
    np.testing.assert_array_equal(ids64, ids)
    brute = np.argsort(-(q.astype(np.float64) @ k.T.astype(np.float64)), axis=1, kind="stable")[:, :12]
    np.testing.assert_array_equal(ids, brute)


def test_topk_ties_straddling_k_pick_lowest_ids():
    q = np.ones((1, 2), dtype=np.float32)
    k = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    s, ids = topk_blocked(q, k, 3)
    assert ids.tolist() == [[2, 1, 3]]
    s, ids = topk_blocked(q, k, 7)  # more than the collection: -1 / -inf padding
    assert ids.tolist() == [[2, 1, 3, 4, 0, -1, -1]] and np.isneginf(s[0, -1])


def test_accepts_torch_tensors():
    img, txt, t2i = _hand_built()
    a = image_text_recall(torch.from_numpy(img), torch.from_numpy(txt), torch.from_numpy(t2i))
    assert a == image_text_recall(img, txt, t2i)


# ---- INQUIRE: AP@k, nDCG@k, MRR ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [10, 50, 200])
def test_ap_at_k_matches_sklearn_definition(k):
    rng = _rng(k)
    for _ in range(5):
        rel = rng.random(200) < 0.1
        scores = rng.normal(size=200) + 1.5 * rel
        order = np.argsort(-scores)
        top = order[:k]
        hits, npos = rel[top].sum(), rel.sum()
        ref = 0.0 if hits == 0 else skm.average_precision_score(rel[top], scores[top]) * hits / min(npos, k)
        assert ap_at_k(rel[order], npos, k) == pytest.approx(ref, abs=1e-12)
        if k >= 200:  # whole collection: plain AP
            assert ap_at_k(rel[order], npos, k) == pytest.approx(skm.average_precision_score(rel, scores), abs=1e-12)


@pytest.mark.parametrize("k", [5, 50])
def test_ndcg_matches_sklearn(k):
    rng = _rng(10 + k)
    rel = (rng.random(100) < 0.15).astype(float)
    scores = rng.normal(size=100) + rel
    ours = ndcg_at_k(rel[np.argsort(-scores)], int(rel.sum()), k)
    assert ours == pytest.approx(skm.ndcg_score(rel[None], scores[None], k=k), abs=1e-12)


def test_rerank_missing_positives_appended_at_bottom():
    rng = _rng(7)
    rel = rng.random(30) < 0.3
    scores = rng.normal(size=30) + rel
    missing = 3  # positives in the collection that are not among the 30 candidates
    out = rerank_metrics(scores[None], rel[None], n_positives=[rel.sum() + missing], k=50)
    y_true = np.concatenate([rel, np.ones(missing)])[None]
    y_score = np.concatenate([scores, scores.min() - 1 - np.arange(missing)])[None]
    assert out["nDCG@50"] == pytest.approx(skm.ndcg_score(y_true, y_score, k=50), abs=1e-12)
    ranked = rel[np.argsort(-scores)]
    assert out["AP@50"] == pytest.approx(ap_at_k(ranked, rel.sum() + missing, 50))
    assert out["AP@50"] < ap_at_k(ranked, rel.sum(), 50)


def test_ap_ndcg_mrr_by_hand():
    ranked = [0, 1, 0, 1, 0]  # hits at ranks 2 and 4, 3 positives in the collection
    assert ap_at_k(ranked, 3, 5) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert ap_at_k(ranked, 3, 2) == pytest.approx((1 / 2) / 2)  # min(npos, k) = 2
    assert ap_at_k([0, 0, 0], 2, 3) == 0.0
    assert reciprocal_rank(ranked) == 0.5 and reciprocal_rank(ranked, k=1) == 0.0
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    assert ndcg_at_k(ranked, 2, 5) == pytest.approx(dcg / (1 + 1 / np.log2(3)))


def test_fullrank_matches_brute_force():
    q, k = _tied_data(9)
    relevant = [np.array([(2 * i) % 53, (7 * i + 1) % 53, 3]) for i in range(37)]
    out = fullrank_metrics(q, k, relevant, k=10, block_size=5)
    order = np.argsort(-(q.astype(np.float64) @ k.T.astype(np.float64)), axis=1, kind="stable")[:, :10]
    aps = [ap_at_k(np.isin(o, r), len(np.unique(r)), 10) for o, r in zip(order, relevant)]
    assert out["AP@10"] == pytest.approx(np.mean(aps))
    assert out["n_queries"] == 37 and 0 <= out["MRR"] <= 1
