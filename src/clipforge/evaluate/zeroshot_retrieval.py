"""Zero-shot image<->text retrieval on a captioned source (Flickr30K / COCO protocol).

Every readable image is a key for text->image and a query for image->text; every caption of it is a text
(several per image). Recall@K, mean and median rank come from `clipforge.metrics.retrieval.image_text_recall`,
which scores block by block (never the whole N x M matrix) with the documented tie rule (lower index first).
With a `cutoff` k, the ranked-list metrics AP@k, nDCG@k and MRR are added for both directions (image->text:
the relevant texts are the image's captions; text->image: its one image). Images whose file cannot be read
are skipped with their captions, and counted. An index directory (`clipforge index build`) is scored from
its stored embeddings instead (`index_retrieval.py`).

With `rerank` (a second model), the task also measures two-stage text->image retrieval: stage 1's top
`rerank_k` re-scored by the second model (`two_stage_retrieval.py`; metrics `stage2_t2i_*`, `rerank_t2i_*`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from clipforge.data.sources import open_source
from clipforge.encode import Encoder, as_encoder
from clipforge.errors import UsageError
from clipforge.evaluate.index_retrieval import evaluate_index_retrieval
from clipforge.evaluate.tasks import CUTOFF, TASKS, EvalTask, TaskResult
from clipforge.evaluate.two_stage_retrieval import evaluate_two_stage_retrieval
from clipforge.metrics.retrieval import image_text_ranked_metrics, image_text_recall
from clipforge.registry import Option

__all__ = ["evaluate_zeroshot_retrieval", "ZeroShotRetrieval"]


def evaluate_zeroshot_retrieval(model, source, *, ks: Sequence[int] = (1, 5, 10), cutoff: Optional[int] = None,
                                batch_size: int = 256, workers: int = 0, progress: Optional[bool] = None,
                                features=None) -> dict:
    """-> {"metrics": {i2t_R@K, i2t_mean_rank, i2t_median_rank, i2t_n, t2i_... (+ AP@k, nDCG@k, MRR with a
    cutoff)}, "num_images", "num_texts", "skipped"}. `model`: a model or an `Encoder`; `features`: a
    precomputed `SourceFeatures` of `source` (optional)."""
    encoder = as_encoder(model)
    if isinstance(source, str):
        source = open_source(source)
    feats = features or encoder.encode_source(source, batch_size, workers=workers, progress=progress,
                                              desc="retrieval images")
    texts = [c for caps in feats.captions for c in caps]
    t2i = np.repeat(np.arange(len(feats.captions)), [len(c) for c in feats.captions])  # (M,) image of each text
    if len(feats.ids) == 0:
        raise UsageError(f"{source.spec}: no readable images")
    if not texts:
        raise UsageError(f"{source.spec}: the images have no captions; retrieval needs image-text pairs")
    text_emb = encoder.encode_texts(texts, batch_size, progress=progress)
    metrics = image_text_recall(feats.feats, text_emb, t2i, ks=ks)
    if cutoff is not None:
        metrics.update(image_text_ranked_metrics(feats.feats, text_emb, t2i, _check_cutoff(cutoff)))
    return {"metrics": metrics, "num_images": len(feats.ids), "num_texts": len(texts),
            "skipped": feats.skipped.as_dict()}


def _check_cutoff(cutoff: int) -> int:
    if int(cutoff) < 1:
        raise UsageError(f"`cutoff` must be >= 1, got {cutoff}")
    return int(cutoff)


@TASKS.register("zeroshot-retrieval")
class ZeroShotRetrieval(EvalTask):
    """Image<->text recall@1/5/10 and ranks (plus AP@k, nDCG@k, MRR with a cutoff; with a second model, the
    two-stage text->image numbers); also on an index."""

    options = (CUTOFF,
               Option("rerank", str, help="a second model: also measure stage 1's top rerank_k re-scored by it "
                                          "(two-stage text->image retrieval)"),
               Option("rerank_k", int, 100, help="candidates the second model re-scores (default 100)"))
    accepts_index = True

    def run(self, encoder, dataset, ctx, *, cutoff=None, rerank=None, rerank_k=100) -> TaskResult:
        config = {"cutoff": cutoff} if cutoff is not None else {}
        if rerank is not None:
            second = rerank if isinstance(rerank, Encoder) else Encoder.load(rerank, device=encoder.device,
                                                                              precision=encoder.precision)
            res = evaluate_two_stage_retrieval(encoder, second, dataset.source, rerank_k=rerank_k,
                                               cutoff=cutoff, batch_size=ctx.batch_size, workers=ctx.workers,
                                               progress=ctx.progress)
            config.update({"rerank": str(getattr(rerank, "name", rerank)), "rerank_k": res["rerank_k"]})
        else:
            res = evaluate_zeroshot_retrieval(encoder, dataset.source, cutoff=cutoff, batch_size=ctx.batch_size,
                                              workers=ctx.workers, progress=ctx.progress)
        extra = {"num_images": res["num_images"], "num_texts": res["num_texts"], "skipped": res["skipped"]}
        return TaskResult(res["metrics"], config, extra)

    def run_index(self, index_dir, ctx, *, cutoff=None, rerank=None, rerank_k=100) -> TaskResult:
        if rerank is not None:
            raise UsageError("`rerank` needs the dataset itself (a source of captioned images), not an index "
                             "directory: both models embed its images")
        res = evaluate_index_retrieval(index_dir, cutoff=None if cutoff is None else _check_cutoff(cutoff))
        config = {"source": "index", "index_precision": res["precision"],
                  "captions_per_image": res["captions_per_image"], **({"cutoff": cutoff} if cutoff else {})}
        extra = {k: res[k] for k in ("model", "num_images", "num_texts", "captions_per_image", "source_captions",
                                     "dropped_captions", "skipped")}
        return TaskResult(res["metrics"], config, extra)
