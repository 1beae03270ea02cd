"""Label images with no training: top-k class names (with scores) for image files or a whole source.

    res = classify(model, ["cat.jpg", "dog.png"], ["cat", "dog", "car"], k=2)
    for p in res:                      # Prediction(id, labels, scores), in input order
        print(p.id, p.labels, p.scores)
    res.skipped                        # SkipCounter: unreadable images by reason

Any registered zero-shot method (`clipforge.zeroshot.methods.METHODS`) with its own options:
  mean      template ensemble head; scores are softmax probabilities over the classes
  zpe       ZPE-weighted templates; the prompt weights are fitted on the images being classified (the test
            pool) plus an optional unlabelled `reference` pool, so ALL images are encoded before the first
            prediction comes out; scores are probabilities
  cupl      class vectors from description sentences (optionally pooled with templates); probabilities
  describe  mean probability of a class's "template + description" prompts (not a softmax over classes)
  disclip   DisCLIP-style rescoring of the top `disclip_top` candidate classes with selected descriptions;
            scores are the rescored similarities, at most `disclip_top` labels per image
Non-transductive methods stream: features are computed and classified batch by batch.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch

from clipforge.atomic import atomic_write
from clipforge.data.decode import SkipCounter
from clipforge.data.sources.filelist import open_inputs
from clipforge.encode import as_encoder
from clipforge.errors import UsageError
from clipforge.output_dirs import OutputFile, file_head
from clipforge.zeroshot.head_model import check_head_model, record_model
from clipforge.zeroshot.zeroshot_head import ZeroShotHead, head_output
from clipforge.zeroshot.methods import METHODS

__all__ = ["Prediction", "Classification", "classify", "write_predictions"]


@dataclass
class Prediction:
    id: str
    labels: list[str]  # best first
    scores: list[float]

    def as_dict(self) -> dict:
        return {"id": self.id, "labels": self.labels, "scores": [round(s, 6) for s in self.scores]}


class Classification:
    """The result of `classify`: iterate once for predictions (input order); `skipped` fills as you go.

    `head` is the linear head used (None for methods that score image by image, and for a transductive
    method until iteration has fitted it); `meta` describes the method once iteration has started.
    """

    def __init__(self, encoder, source, classnames, method, scorer, k, batch_size, workers, progress,
                 save_head=None, overwrite=False):
        self.encoder, self.source, self.classnames = encoder, source, classnames
        self.method, self._scorer, self.k = method, scorer, k
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.save_head, self.overwrite = save_head, overwrite
        self.skipped = SkipCounter()
        self.head = scorer if isinstance(scorer, ZeroShotHead) else None
        self.meta: dict = dict(getattr(scorer, "meta", {}))
        self.count = 0

    def _batches(self):
        for b in self.encoder.iter_source(self.source, self.batch_size, workers=self.workers, skipped=self.skipped,
                                          progress=self.progress, desc="classify"):
            yield b.ids, b.feats

    def __iter__(self) -> Iterator[Prediction]:
        stream: Iterable = self._batches()
        if self._scorer is None:  # transductive: every feature first, then the scorer
            batches = list(stream)
            if batches:
                feats = torch.cat([f for _, f in batches])
                self._scorer = self.method.build(self.encoder, self.classnames, test_features=feats,
                                                 batch_size=self.batch_size, workers=self.workers,
                                                 progress=self.progress)
                if isinstance(self._scorer, ZeroShotHead):
                    self.head = self._scorer
                    if self.save_head:
                        record_model(self.head, self.encoder)
                        self.head.save(self.save_head, overwrite=self.overwrite)
                self.meta = dict(getattr(self._scorer, "meta", {}))
            stream = iter(batches)
        for ids, feats in stream:
            if not ids:
                continue
            scores, idx = self._scorer.topk(feats, self.k)  # (B, k') each
            for i, sid in enumerate(ids):
                self.count += 1
                yield Prediction(sid, [self.classnames[j] for j in idx[i].tolist()],
                                 [float(s) for s in scores[i].tolist()])

    def __repr__(self) -> str:
        return f"Classification({self.source!r}, classes={len(self.classnames)}, k={self.k})"


def classify(model, inputs, classnames=None, *, method: Optional[str] = None, k: int = 5, head=None,
             save_head=None, batch_size: int = 256, workers: int = 0, progress: Optional[bool] = None,
             overwrite: bool = False, allow_other_model: bool = False, **method_options) -> Classification:
    """Zero-shot top-k labels for `inputs` (image paths, a source spec, or a Source).

    `model`: a loaded model or an `Encoder`. `method`: a registered zero-shot method (None: "mean");
    `method_options` are that method's own (e.g. templates=, descriptions=, reference=, mad_threshold=).
    `classnames`: list of names (may be None when `head` is given). `head`: a `ZeroShotHead` or a path saved
    with `save_head` — skips building. Options are checked and the head (except a transductive method's) is
    built before this returns; images are read while iterating the result. A ready `head` may be any scorer with
    `topk`, `scores` and `classnames` (e.g. a few-shot head from `clipforge.adapt`). A saved head records the
    model it was fitted on (`zeroshot.head_model`); a ready `head` recording another model than `model` is
    refused unless `allow_other_model`.
    """
    if not isinstance(k, int) or k < 1:
        raise UsageError(f"`k` must be a positive integer, got {k!r}")
    encoder = as_encoder(model)
    if head is not None:
        given = sorted(n for n, v in method_options.items() if v is not None)
        if method not in (None, "mean") or given or save_head is not None:
            what = ", ".join(f"`{n}`" for n in given + (["save_head"] if save_head is not None else []))
            raise UsageError(f"a ready `head` cannot be changed by " + (what or f"`method` {method}"))
        if not (hasattr(head, "topk") and hasattr(head, "classnames")):  # a path; else any ready head (few-shot too)
            head = ZeroShotHead.load(head)
        check_head_model(head, encoder, allow_other_model=allow_other_model)
        if classnames is not None and list(classnames) != list(head.classnames):
            raise UsageError(f"the head's {len(head.classnames)} class names differ from the given `labels`; "
                             "drop them or rebuild the head")
        classnames, m, scorer = list(head.classnames), None, head
    else:
        if classnames is None:
            raise UsageError("no class names: give `labels` / `labels_file` (or a `head`)")
        name = method or "mean"
        m = METHODS.create(name, **method_options)
        if save_head is not None and not m.linear:
            raise UsageError(f"`save_head` needs a linear head (`method` "
                             f"{'/'.join(n for n in METHODS.names() if METHODS.get(n).linear)}); {name} scores "
                             "image by image")
        if save_head is not None:
            head_output(save_head, overwrite=overwrite, param="save_head")  # refused before any text is encoded
        classnames = [str(c) for c in classnames]
        scorer = None
        if not m.transductive:
            scorer = m.build(encoder, classnames, batch_size=batch_size, workers=workers, progress=progress)
            if save_head is not None:
                record_model(scorer, encoder)
                scorer.save(save_head, overwrite=overwrite)
    source = open_inputs(inputs)
    return Classification(encoder, source, classnames, m, scorer, k, batch_size, workers, progress, save_head,
                          overwrite)


def _csv_row(p: Prediction, k: int) -> list:
    row = [p.id]
    for j in range(k):
        row += [p.labels[j], f"{p.scores[j]:.6g}"] if j < len(p.labels) else ["", ""]
    return row


_CSV_HEADER = b"id,label_1,score_1"


def _is_predictions_file(p: Path) -> bool:
    """An earlier `write_predictions` output: its CSV header, or a first JSON line of exactly id/labels/scores."""
    head = file_head(p, 1 << 16)
    if p.suffix.lower() == ".csv":
        return head.startswith(_CSV_HEADER)
    try:
        first = json.loads(head.split(b"\n", 1)[0])
    except ValueError:
        return False
    return isinstance(first, dict) and set(first) == {"id", "labels", "scores"}


def prediction_output(out, *, overwrite: bool = False) -> OutputFile:
    """Vet `out` for `write_predictions` (call it before classifying): an earlier predictions file is replaced,
    another file only with `overwrite`, a folder, link, device or FIFO never."""
    fmt = Path(out).suffix.lower().lstrip(".")
    if fmt not in ("csv", "jsonl"):
        raise UsageError(f"`out` must end in .csv or .jsonl, got {str(out)!r}")
    output = OutputFile(overwrite=overwrite, param="out", owned=_is_predictions_file)
    output.vet(out)
    return output


def write_predictions(predictions: Iterable[Prediction], out, k: int, *, overwrite: bool = False) -> int:
    """Write predictions as CSV (id,label_1,score_1,...) or JSONL by suffix, atomically. Returns the count.
    An earlier predictions file at `out` is replaced; another file only with `overwrite` (`prediction_output`)."""
    output = prediction_output(out, overwrite=overwrite)
    path = Path(out)
    fmt = path.suffix.lower().lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0

    def write(f) -> None:
        nonlocal n
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        if fmt == "csv":
            w = csv.writer(text)
            w.writerow(["id"] + [c for j in range(1, k + 1) for c in (f"label_{j}", f"score_{j}")])
            for p in predictions:
                w.writerow(_csv_row(p, k))
                n += 1
        else:
            for p in predictions:
                text.write(json.dumps(p.as_dict(), ensure_ascii=False) + "\n")
                n += 1
        text.flush()
        text.detach()  # leave the binary file open for atomic_write's fsync

    atomic_write(path, write, output=output)
    return n
