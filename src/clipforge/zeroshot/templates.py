"""Prompt template sets for zero-shot classification, with `{c}` as the class-name placeholder.

Named sets: OpenAI's 80 ImageNet templates (CLIP repo, "Prompt_Engineering_for_ImageNet"), the 7-template
subset OpenAI found by greedy selection on ImageNet, a single "a photo of a {c}." template, and a few
per-dataset sets from the same source. A user file has one template per line; blank lines and lines
starting with `#` are skipped; `{}` (OpenAI's placeholder) is accepted as a synonym of `{c}`.

Filling uses `str.replace`, not `str.format`, so other braces in a template stay literal.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from clipforge.errors import UsageError

__all__ = ["TEMPLATE_SETS", "list_template_sets", "get_templates", "load_template_file", "fill", "templates_hash"]

_OPENAI_IMAGENET = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]

# The 7 templates OpenAI's notebook reports as the best small subset for ImageNet.
_OPENAI_IMAGENET_7 = [
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]

_CIFAR = [
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
    "a blurry photo of the {}.", "a black and white photo of the {}.", "a low contrast photo of the {}.",
    "a high contrast photo of the {}.", "a bad photo of the {}.", "a good photo of the {}.",
    "a photo of the small {}.", "a photo of the big {}.",
]

TEMPLATE_SETS: dict[str, list[str]] = {
    "openai_imagenet": _OPENAI_IMAGENET,
    "openai_imagenet_7": _OPENAI_IMAGENET_7,
    "photo": ["a photo of a {}."],
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "mnist": ['a photo of the number: "{}".'],
    "digits": ['a photo of the number: "{}".'],
    "food101": ["a photo of {}, a type of food."],
    "oxford_pets": ["a photo of a {}, a type of pet."],
    "flowers102": ["a photo of a {}, a type of flower."],
    "fgvc_aircraft": ["a photo of a {}, a type of aircraft."],
    "eurosat": ["a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                "a centered satellite photo of the {}."],
}
TEMPLATE_SETS = {name: [t.replace("{}", "{c}") for t in ts] for name, ts in TEMPLATE_SETS.items()}
_ALIASES = {"imagenet": "openai_imagenet", "openai": "openai_imagenet", "short": "openai_imagenet_7",
            "simple": "openai_imagenet_7", "single": "photo"}


def list_template_sets() -> list[str]:
    return sorted(TEMPLATE_SETS)


def _normalise(template: str, where: str) -> str:
    t = template.replace("{}", "{c}")
    if "{c}" not in t:
        raise UsageError(f"template {template!r} ({where}) has no {{c}} placeholder for the class name")
    return t


def load_template_file(path) -> list[str]:
    """One template per line, `{c}` (or `{}`) marking the class name; `#` comments and blanks skipped."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"template file {str(p)!r} does not exist")
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(_normalise(line, f"{p.name} line {i}"))
    if not out:
        raise UsageError(f"template file {str(p)!r} contains no templates")
    return out


def get_templates(spec: str | list[str] | tuple[str, ...] | None = None) -> list[str]:
    """A named set, a path to a template file, or a list of templates; None -> 'openai_imagenet'."""
    if spec is None:
        spec = "openai_imagenet"
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise UsageError("an empty list of templates was given")
        return [_normalise(t, f"template {i}") for i, t in enumerate(spec)]
    name = _ALIASES.get(spec, spec)
    if name in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[name])
    if Path(spec).is_file():
        return load_template_file(spec)
    raise UsageError(
        f"unknown template set {spec!r} (not a file either); named sets: {', '.join(list_template_sets())}"
        f"; aliases: {', '.join(sorted(_ALIASES))}"
    )


def fill(template: str, classname: str) -> str:
    """Put `classname` where `{c}` is."""
    return template.replace("{c}", classname)


def templates_hash(templates: list[str]) -> str:
    """Short stable hash of a template list (order matters), recorded with results."""
    return hashlib.sha256(json.dumps(list(templates), ensure_ascii=False).encode()).hexdigest()[:16]
