"""The `captioning` task (CLIP_benchmark's `captioning`): caption every image of a source with reference
captions and score the captions with the COCO caption metrics (`metrics.captioning`: BLEU-1..4 and CIDEr-D,
pycocoevalcap's arithmetic; no METEOR, which needs Java). An image may carry one reference or several (every
caption of a sample is a reference); images without captions are skipped and counted. Needs a model with a
caption decoder (a CoCa)."""
from __future__ import annotations

from typing import Optional

from clipforge.data.decode import SkipCounter
from clipforge.data.sources import open_source
from clipforge.encode.captioner import DEFAULTS, Captioner
from clipforge.errors import UsageError
from clipforge.evaluate.tasks import TASKS, EvalTask, TaskResult
from clipforge.metrics.captioning import caption_metrics
from clipforge.models.generation import METHODS
from clipforge.registry import Option

__all__ = ["evaluate_captioning", "Captioning"]


def evaluate_captioning(model, source, *, method: str = DEFAULTS["method"], max_tokens: int = DEFAULTS["max_tokens"],
                        beams: int = DEFAULTS["beams"], examples: int = 10, batch_size: int = 32, workers: int = 0,
                        progress: Optional[bool] = None) -> dict:
    """-> {"metrics": {bleu_1..bleu_4, cider}, "num_images", "num_references", "examples": the first
    `examples` (id, caption, references), "skipped"}. `model`: a captioning model, `Captioner` or `Encoder`."""
    cap = model if isinstance(model, Captioner) else Captioner(getattr(model, "model", model),
                                                               ref=getattr(model, "ref", None))
    if isinstance(source, str):
        source = open_source(source)
    skipped = SkipCounter()
    ids, cands, refs = [], [], []
    for batch, caps in cap.caption_source(source, batch_size, workers=workers, require="caption", skipped=skipped,
                                          progress=progress, method=method, max_tokens=max_tokens, beams=beams):
        ids += batch.ids
        cands += caps
        refs += [list(r) for r in batch.captions]
    if not ids:
        raise UsageError(f"{source.spec}: no readable images with reference captions")
    return {"metrics": caption_metrics(cands, refs), "num_images": len(ids),
            "num_references": sum(len(r) for r in refs),
            "examples": [{"id": i, "caption": c, "references": r[:5]}
                         for i, c, r in list(zip(ids, cands, refs))[:max(0, int(examples))]],
            "skipped": skipped.as_dict()}


@TASKS.register("captioning")
class Captioning(EvalTask):
    """BLEU-1..4 and CIDEr-D of generated captions against a source's reference captions (a CoCa model)."""

    # "decoding", not "method": task options share one flag namespace and zero-shot tasks own `method`
    options = (Option("decoding", str, DEFAULTS["method"], help="decoding: greedy | beam | top_p (default beam)",
                      choices=METHODS),
               Option("max_tokens", int, DEFAULTS["max_tokens"], help="most tokens per caption (default 20)"),
               Option("beams", int, DEFAULTS["beams"], help="beam search width (default 4)"),
               Option("examples", int, 10, help="captions recorded in the result as examples (default 10)"))

    def run(self, encoder, dataset, ctx, *, decoding=DEFAULTS["method"], max_tokens=DEFAULTS["max_tokens"],
            beams=DEFAULTS["beams"], examples=10) -> TaskResult:
        method = decoding
        res = evaluate_captioning(encoder, dataset.source, method=method, max_tokens=max_tokens, beams=beams,
                                  examples=examples, batch_size=min(ctx.batch_size, 64), workers=ctx.workers,
                                  progress=ctx.progress)
        config = {"decoding": method, "max_tokens": max_tokens, **({"beams": beams} if method == "beam" else {})}
        extra = {k: res[k] for k in ("num_images", "num_references", "examples", "skipped")}
        return TaskResult(res["metrics"], config, extra)
