"""Zero-shot (and, later, few-shot) classification methods by name, each declaring its own options.

    METHODS.names()                               # ['cupl', 'describe', 'disclip', 'mean', 'zpe']
    method = METHODS.create("zpe", templates="photo", mad_threshold=0.5)
    scorer = method.build(encoder, classnames, test_features=feats)   # test_features: transductive methods
    scores = scorer.scores(feats)                 # (N, C), higher is better
    probs, idx = scorer.topk(feats, k=5)

A method is one class in one file, registered with `@METHODS.register("name")`; `clipforge classify` and the
zeroshot-classification task of `clipforge eval` offer every registered method and its options. A `Scorer`
is anything with `scores(feats) -> (N, C)`, `topk(feats, k) -> (values, class indices)` and a `meta` dict;
methods whose scorer is a linear `ZeroShotHead` set `linear = True` (the head can be saved and reused).
"""
from __future__ import annotations

from typing import ClassVar, Optional, Protocol, Sequence

import torch

from clipforge.registry import Option, Registry

__all__ = ["METHODS", "ZeroShotMethod", "Scorer", "TEMPLATES", "DESCRIPTIONS", "list_methods", "create_method"]

METHODS = Registry("zero-shot method", param="method")

TEMPLATES = Option("templates", str, help="template set name (openai_imagenet, openai_imagenet_7, photo, ...) "
                   "or a file with one template per line using {c} (default: openai_imagenet, 80 templates)")
DESCRIPTIONS = Option("descriptions", str, required=True,
                      help="class descriptions: a JSON file {class: [sentences]} (CuPL's format)")


class Scorer(Protocol):
    meta: dict

    def scores(self, image_feats: torch.Tensor) -> torch.Tensor: ...

    def topk(self, image_feats: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]: ...


class ZeroShotMethod:
    """Base class: keeps the checked options as attributes; subclasses implement `build`.

    `transductive`: the scorer is fitted on the features of the images being classified (they must all be
    encoded before the first prediction). `linear`: `build` returns a `ZeroShotHead`.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    transductive: ClassVar[bool] = False
    linear: ClassVar[bool] = False
    score_kind: ClassVar[str] = "probability over the classes"

    def __init__(self, **options):
        for k, v in options.items():
            setattr(self, k, v)

    def build(self, encoder, classnames: Sequence[str], *, test_features: Optional[torch.Tensor] = None,
              batch_size: int = 256, workers: int = 0, progress: Optional[bool] = None) -> Scorer:
        """A scorer for these class names. `encoder`: a `clipforge.encode.Encoder` (texts, and images for
        methods that read extra ones); `test_features`: (N, D) features of the images to classify."""
        raise NotImplementedError


def list_methods() -> list[str]:
    return METHODS.names()


def create_method(name: str, **options) -> ZeroShotMethod:
    """A registered method with checked options (None values count as not given)."""
    return METHODS.create(name, **options)
