"""Description scoring (AdaptCLIPZS-style): classify by the mean probability of a class's own prompts.

Each class gets prompts "template(class) + description" for every template and every description of that
class. For an image, a softmax runs over ALL prompts of all classes (at `logit_scale`), and the class score
is the mean probability over its own prompts. Scores are therefore not a softmax over classes, and classes
with many descriptions are not favoured (it is a mean, not a sum).

The joining format is configurable (`prompt_format`, default "{prompt}, {description}" with the template's
final period removed, e.g. "a photo of a cat, which has whiskers."); the exact wording AdaptCLIPZS used is
unconfirmed. A class without descriptions uses its plain template prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from clipforge.errors import UsageError
from clipforge.registry import Option
from clipforge.zeroshot.cupl import load_descriptions, match_descriptions
from clipforge.zeroshot.zeroshot_head import EncodeText, encode_normalized, model_text_encoder
from clipforge.zeroshot.methods import DESCRIPTIONS, METHODS, TEMPLATES, ZeroShotMethod
from clipforge.zeroshot.templates import fill, get_templates

__all__ = ["DescriptionScorer", "description_prompts", "DescribeMethod"]
DEFAULT_FORMAT = "{prompt}, {description}"


def description_prompts(
    classnames: Sequence[str], descriptions: dict[str, list[str]], templates: Sequence[str],
    prompt_format: str = DEFAULT_FORMAT,
) -> tuple[list[str], list[int]]:
    """All "template(class) + description" texts and the class index owning each."""
    texts, owner = [], []
    for ci, (c, descs) in enumerate(zip(classnames, match_descriptions(classnames, descriptions))):
        for t in templates:
            prompt = fill(t, c)
            if not descs:
                texts.append(prompt)
                owner.append(ci)
            for d in descs:
                texts.append(prompt_format.format(prompt=prompt.rstrip(". "), description=d))
                owner.append(ci)
    return texts, owner


@dataclass
class DescriptionScorer:
    text_emb: torch.Tensor  # (T, D) normalised prompt embeddings
    owner: torch.Tensor  # (T,) long: class index of each prompt
    classnames: list[str]
    logit_scale: float = 100.0

    @classmethod
    def build(
        cls, encode_text: EncodeText, classnames: Sequence[str], descriptions, templates=("a photo of a {c}.",),
        prompt_format: str = DEFAULT_FORMAT, logit_scale: float = 100.0, batch_size: int = 1024,
        progress=None,
    ) -> "DescriptionScorer":
        desc = descriptions if isinstance(descriptions, dict) else load_descriptions(descriptions)
        tmpl = get_templates(list(templates) if isinstance(templates, tuple) else templates)
        texts, owner = description_prompts(list(classnames), desc, tmpl, prompt_format)
        emb = encode_normalized(encode_text, texts, batch_size, progress)
        return cls(emb, torch.tensor(owner), list(classnames), logit_scale)

    def scores(self, image_feats, block_size: int = 1024) -> torch.Tensor:
        """(N, D) image features -> (N, C) class scores (mean probability over the class's prompts)."""
        f = F.normalize(torch.as_tensor(image_feats).float(), dim=-1)
        c = len(self.classnames)
        counts = torch.bincount(self.owner, minlength=c).float()  # (C,)
        if (counts == 0).any():
            raise UsageError("every class needs at least one prompt")
        out = []
        for i in range(0, len(f), block_size):
            p = (self.logit_scale * f[i : i + block_size] @ self.text_emb.T).softmax(-1)  # (b, T)
            sums = torch.zeros(len(p), c).index_add_(1, self.owner, p)  # (b, C)
            out.append(sums / counts)
        return torch.cat(out) if out else torch.zeros(0, c)

    def predict(self, image_feats, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, class indices), each (N, min(k, C)), best first."""
        return self.scores(image_feats).topk(min(k, len(self.classnames)), dim=-1)

    topk = predict

    @property
    def meta(self) -> dict:
        return {"method": "describe", "n_prompts": int(len(self.owner))}


@METHODS.register("describe")
class DescribeMethod(ZeroShotMethod):
    """Description scoring: class score = mean probability of its "template + description" prompts."""

    options = (Option(TEMPLATES.name, str, help=TEMPLATES.help.replace("openai_imagenet, 80 templates",
                                                                       "describe: 'a photo of a {c}.'")),
               DESCRIPTIONS,
               Option("prompt_format", str, DEFAULT_FORMAT, help="describe: how a prompt and a description join"))
    score_kind = "mean probability of the class's prompts"

    def build(self, encoder, classnames, *, test_features=None, batch_size=256, workers=0, progress=None):
        templates = ("a photo of a {c}.",) if self.templates is None else self.templates
        return DescriptionScorer.build(model_text_encoder(encoder, batch_size), classnames, self.descriptions,
                                       templates, self.prompt_format, progress=progress)
