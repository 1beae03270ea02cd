"""clipforge.metrics: the field's standard metrics as pure functions on scores and embeddings.

`classification`: top-k accuracy, mean per-class recall, confusion matrix, (multilabel) average precision.
`retrieval`: blocked image<->text recall@K and ranks, INQUIRE-style AP@k / nDCG@k / MRR (full-rank and rerank).
Both use one tie rule: among equal scores, the lower index ranks first.
"""
from clipforge.metrics.classification import (
    average_precision, classification_metrics, confusion_matrix, label_ranks, mean_per_class_recall,
    multilabel_map, predictions, stable_argsort_desc, to_numpy, topk_accuracy,
)
from clipforge.metrics.retrieval import (
    ap_at_k, fullrank_metrics, image_text_ranked_metrics, image_text_recall, ndcg_at_k, positive_ranks, ranked_list_metrics,
    reciprocal_rank, rerank_metrics, similarity_blocks, topk_blocked,
)

__all__ = [
    "average_precision", "classification_metrics", "confusion_matrix", "label_ranks", "mean_per_class_recall",
    "multilabel_map", "predictions", "stable_argsort_desc", "to_numpy", "topk_accuracy",
    "ap_at_k", "fullrank_metrics", "image_text_ranked_metrics", "image_text_recall", "ndcg_at_k", "positive_ranks", "ranked_list_metrics",
    "reciprocal_rank", "rerank_metrics", "similarity_blocks", "topk_blocked",
]
