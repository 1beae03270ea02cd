"""Label images with no training: top-k class names (with scores) for files or a whole source.

    res = classify(model, ["cat.jpg", "dog.png"], ["cat", "dog", "car"], k=2)
    for p in res:                      # Prediction(id, labels, scores), in input order
        print(p.id, p.labels, p.scores)
    res.skipped                        # SkipCounter: unreadable images by reason

Methods (see TECHNIQUES.md, Zero-shot):
  mean      template ensemble head; scores are softmax probabilities over the classes
  zpe       ZPE-weighted templates; the prompt weights are fitted on the images being classified (the test
            pool) plus an optional unlabelled `reference` pool, so ALL images are encoded before the first
            prediction comes out; scores are probabilities
  cupl      class vectors from description sentences (optionally pooled with templates); probabilities
  describe  mean probability of a class's "template + description" prompts (not a softmax over classes)
  disclip   DisCLIP-style rescoring of the top `disclip_top` candidate classes with selected descriptions;
            scores are the rescored similarities, at most `disclip_top` labels per image
The other methods stream: features are computed and classified batch by batch.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import torch

from clipforge.atomic import temp_sibling
from clipforge.data.decode import SkipCounter
from clipforge.data.sample import Sample, file_meta
from clipforge.data.sources.base import Source
from clipforge.errors import UsageError

__all__ = ["METHODS", "Prediction", "Classification", "FileListSource", "open_inputs", "read_labels",
           "classify", "write_predictions"]

METHODS = ("mean", "zpe", "cupl", "describe", "disclip")
_HEAD_METHODS = ("mean", "zpe", "cupl")  # those that produce a linear ZeroShotHead (savable)
_NEED_DESCRIPTIONS = ("cupl", "describe", "disclip")


@dataclass
class Prediction:
    id: str
    labels: list[str]  # best first
    scores: list[float]

    def as_dict(self) -> dict:
        return {"id": self.id, "labels": self.labels, "scores": [round(s, 6) for s in self.scores]}


class FileListSource(Source):
    """Explicit image files, in the order given; the id is the path as given."""

    kind = "files-list"

    def __init__(self, paths: Sequence[str], **kw):
        super().__init__(f"files-list:{len(paths)}", **kw)
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def _get(self, index: int) -> Sample:
        p = self.paths[index]
        return Sample(id=p, path=p, meta=file_meta(p), decode_options=self.decode_options)


def _looks_like_source(arg: str) -> bool:
    from clipforge.data.sources.spec import KINDS
    from clipforge.data.sources.manifest import format_of

    head = arg.split(":", 1)[0]
    return (head in KINDS and ":" in arg) or os.path.isdir(arg) or format_of(arg) is not None \
        or arg.endswith((".tar", ".tar.gz", ".tgz")) or "{" in arg or "::" in arg


def open_inputs(inputs) -> Source:
    """A Source from what the user named: one source spec (folder, manifest, shards) or image files."""
    from clipforge.data.sources import open_source

    if isinstance(inputs, Source):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(x) for x in inputs]
    if not inputs:
        raise UsageError("no images given: name image files or one source (folder, manifest, shards)")
    sources = [x for x in inputs if _looks_like_source(x)]
    if sources:
        if len(inputs) > 1:
            raise UsageError(f"give either image files or exactly one source, not both/several "
                             f"(sources among the inputs: {sources[:3]})")
        return open_source(sources[0])
    return FileListSource(inputs)


def read_labels(labels=None, labels_file=None) -> list[str]:
    """Class names from a comma-separated string / list, or a file (one per line, or a JSON list)."""
    from clipforge.evaluate.zeroshot_classification import resolve_classnames

    if (labels is None) == (labels_file is None):
        raise UsageError("give the class names with exactly one of --labels \"cat,dog\" or --labels-file FILE")
    if labels_file is not None:
        names = resolve_classnames(None, str(labels_file))
    elif isinstance(labels, str):
        names = [c.strip() for c in labels.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in labels if str(c).strip()]
    if not names:
        raise UsageError("--labels/--labels-file gave no class names")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise UsageError(f"class names must be unique; repeated: {dup[:5]}")
    return names


class Classification:
    """The result of `classify`: iterate once for predictions (input order); `skipped` fills as you go."""

    def __init__(self, model, source, classnames, scorer, k, batch_size, workers, progress, transductive):
        self.model, self.source, self.classnames = model, source, classnames
        self._scorer, self.k = scorer, k
        self.batch_size, self.workers, self.progress = batch_size, workers, progress
        self.transductive = transductive  # ZPE: needs every test feature before the head exists
        self.skipped = SkipCounter()
        self.head = None if transductive else getattr(scorer, "head", None)
        self.meta: dict = {}
        self.count = 0

    def _features(self):
        from clipforge.evaluate.encode import iter_image_features

        return iter_image_features(self.model, self.source, self.batch_size, self.workers, self.skipped,
                                   self.progress, desc="classify")

    def __iter__(self) -> Iterator[Prediction]:
        if self.transductive:
            batches = [(b.ids, f) for b, f in self._features()]
            if batches:
                self._scorer.fit(torch.cat([f for _, f in batches]))
                self.head = self._scorer.head
            stream: Iterable = iter(batches)
        else:
            stream = ((b.ids, f) for b, f in self._features())
        self.meta = dict(getattr(self._scorer, "meta", {}))
        for ids, feats in stream:
            scores, idx = self._scorer.topk(feats, self.k)  # (B, k') each
            for i, sid in enumerate(ids):
                self.count += 1
                yield Prediction(sid, [self.classnames[j] for j in idx[i].tolist()],
                                 [float(s) for s in scores[i].tolist()])

    def __repr__(self) -> str:
        return f"Classification({self.source!r}, classes={len(self.classnames)}, k={self.k})"


class _HeadScorer:
    def __init__(self, head):
        self.head, self.meta = head, head.meta

    def topk(self, feats, k):
        return self.head.topk(feats, k)


class _ZpeScorer:
    def __init__(self, encode, classnames, templates, ref_feats, mad_threshold, progress, save_head):
        self.encode, self.classnames, self.templates = encode, classnames, templates
        self.ref_feats, self.mad_threshold = ref_feats, mad_threshold
        self.progress, self.save_head = progress, save_head
        self.head, self.meta = None, {"method": "zpe"}

    def fit(self, test_feats: torch.Tensor) -> None:
        from clipforge.zeroshot.zpe import build_zpe_classifier

        self.head = build_zpe_classifier(self.encode, self.classnames, test_feats, self.ref_feats, self.templates,
                                         self.mad_threshold, progress=self.progress)
        self.meta = self.head.meta
        if self.save_head:
            self.head.save(self.save_head)

    def topk(self, feats, k):
        return self.head.topk(feats, k)


class _DescribeScorer:
    def __init__(self, scorer):
        self.scorer, self.meta = scorer, {"method": "describe", "n_prompts": int(len(scorer.owner))}

    def topk(self, feats, k):
        return self.scorer.predict(feats, k)


class _DisclipScorer:
    def __init__(self, clf, meta):
        self.clf, self.meta = clf, meta

    def topk(self, feats, k):
        _, cand, rescored = self.clf.predict(feats)  # (B, top) each
        order = rescored.argsort(dim=1, descending=True, stable=True)[:, :k]
        return rescored.gather(1, order), cand.gather(1, order)


def _check_options(method, head, descriptions, reference, save_head, mad_threshold):
    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}")
    if head is not None:
        extra = [name for name, v in (("--descriptions", descriptions), ("--reference", reference),
                                      ("--save-head", save_head), ("--mad-threshold", mad_threshold)) if v is not None]
        if extra:
            raise UsageError(f"--head gives a ready head; {', '.join(extra)} cannot change it")
        return
    if descriptions is None and method in _NEED_DESCRIPTIONS:
        raise UsageError(f"--method {method} needs --descriptions FILE (JSON {{class: [sentences]}})")
    if descriptions is not None and method not in _NEED_DESCRIPTIONS:
        raise UsageError(f"--descriptions is used by --method {'/'.join(_NEED_DESCRIPTIONS)}, not {method}")
    if reference is not None and method != "zpe":
        raise UsageError(f"--reference (an unlabelled image pool) only applies to --method zpe, not {method}")
    if mad_threshold is not None and method != "zpe":
        raise UsageError(f"--mad-threshold only applies to --method zpe, not {method}")
    if save_head is not None and method not in _HEAD_METHODS:
        raise UsageError(f"--save-head needs a linear head (--method {'/'.join(_HEAD_METHODS)}); "
                         f"{method} scores image by image")


def classify(model, inputs, classnames=None, *, method: Optional[str] = None, templates=None, descriptions=None,
             k: int = 5, head=None, reference=None, mad_threshold: Optional[float] = None,
             pool_templates: bool = False, disclip_top: int = 3, save_head=None, batch_size: int = 256,
             workers: int = 0, progress: Optional[bool] = None) -> Classification:
    """Zero-shot top-k labels for `inputs` (image paths, a source spec, or a Source).

    `method`: one of METHODS (None: "mean"). `classnames`: list of names (may be None when `head` is
    given). `templates`: set name, file or list (default OpenAI's 80; `describe` defaults to "a photo of a {c}."). `head`: a `ZeroShotHead` or a path
    saved by `save_head` — skips building. `reference`: unlabelled source (spec or Source) for ZPE's
    reference pool. Options are checked and the head (except ZPE's) is built before this returns; images are
    read while iterating the result.
    """
    from clipforge.zeroshot.classifier import ZeroShotHead, build_classifier, model_text_encoder

    if head is not None and method not in (None, "mean"):
        raise UsageError(f"--head gives a ready head; --method {method} cannot be applied to it")
    method = method or "mean"
    _check_options(method, head, descriptions, reference, save_head, mad_threshold)
    if not isinstance(k, int) or k < 1:
        raise UsageError(f"-k must be a positive integer, got {k!r}")
    if head is not None:
        head = head if isinstance(head, ZeroShotHead) else ZeroShotHead.load(head)
        if classnames is not None and list(classnames) != list(head.classnames):
            raise UsageError(f"the head's {len(head.classnames)} class names differ from the given labels; "
                             "drop --labels or rebuild the head")
        classnames = list(head.classnames)
    elif classnames is None:
        raise UsageError("no class names: give --labels/--labels-file (or --head)")
    classnames = [str(c) for c in classnames]
    source = open_inputs(inputs)
    encode = model_text_encoder(model)
    scorer, transductive = None, False
    if head is not None:
        scorer = _HeadScorer(head)
    elif method in ("mean", "cupl"):
        h = build_classifier(encode, classnames, templates, method=method, descriptions=descriptions,
                             pool_templates=pool_templates, progress=progress)
        if save_head:
            h.save(save_head)
        scorer = _HeadScorer(h)
    elif method == "zpe":
        ref = None
        if reference is not None:
            from clipforge.evaluate.encode import source_features

            ref = source_features(model, open_inputs(reference), batch_size, workers, progress, "reference").feats
            if len(ref) == 0:
                raise UsageError("--reference has no readable images")
        scorer, transductive = _ZpeScorer(encode, classnames, templates, ref, mad_threshold, progress,
                                          save_head), True
    elif method == "describe":
        from clipforge.zeroshot.describe import DescriptionScorer

        tmpl = ("a photo of a {c}.",) if templates is None else templates
        scorer = _DescribeScorer(DescriptionScorer.build(encode, classnames, descriptions, tmpl, progress=progress))
    else:  # disclip
        from clipforge.zeroshot.disclip import DisclipClassifier

        base = build_classifier(encode, classnames, templates, progress=progress)
        clf = DisclipClassifier.build(encode, base.weights, classnames, descriptions, top=disclip_top,
                                      progress=progress)
        scorer = _DisclipScorer(clf, {"method": "disclip", "top": disclip_top, **base.meta})
    return Classification(model, source, classnames, scorer, k, batch_size, workers, progress, transductive)


def _csv_row(p: Prediction, k: int) -> list:
    row = [p.id]
    for j in range(k):
        row += [p.labels[j], f"{p.scores[j]:.6g}"] if j < len(p.labels) else ["", ""]
    return row


def write_predictions(predictions: Iterable[Prediction], path, k: int) -> int:
    """Write predictions as CSV (id,label_1,score_1,...) or JSONL by suffix, atomically. Returns the count."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "jsonl"):
        raise UsageError(f"--out must end in .csv or .jsonl, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_sibling(path)  # the umask's permissions, not mkstemp's 0600
    n = 0
    try:
        with io.open(fd, "w", encoding="utf-8", newline="") as f:
            if fmt == "csv":
                w = csv.writer(f)
                w.writerow(["id"] + [c for j in range(1, k + 1) for c in (f"label_{j}", f"score_{j}")])
                for p in predictions:
                    w.writerow(_csv_row(p, k))
                    n += 1
            else:
                for p in predictions:
                    f.write(json.dumps(p.as_dict(), ensure_ascii=False) + "\n")
                    n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
