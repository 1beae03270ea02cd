"""Rule-based hard negatives: a captioned source -> a selection JSONL (`data.selection_set`), so any user set
becomes a compositionality test for the `image-caption-selection` eval task.

Each kind rewrites an image's first caption one documented way, using small built-in word lists (below); a
caption the rule finds nothing to change in is skipped for that kind and counted, never rewritten another way:

  swap-attribute     the first two different attribute words (colours, sizes, materials, states) trade places:
                     "a red cup on a blue table" -> "a blue cup on a red table"; needs two
  swap-object        the first two different object nouns (the OBJECTS list, singular or plural) trade places:
                     "a cat on a sofa" -> "a sofa on a cat"; each slot keeps its number ("a dog near two
                     cats" -> "a cat near two dogs"); needs two
  replace-attribute  the first attribute word becomes another of its group (a colour another colour)
  replace-object     the first object noun becomes another of its group (an animal another animal), keeping
                     its plural "s"
  replace-number     the first count from two to ten, in words or digits, becomes another in that range in the
                     same form ("three dogs" -> "seven dogs"; `counterfactual.counterfactual_caption`). "one"
                     and "a" are left alone (the noun's number would give the negative away)
  replace-relation   the first spatial or relational phrase (RELATIONS) becomes its opposite:
                     "a cup on a table" -> "a cup under a table"
  shuffle            the caption's words in a seeded random order other than the original (its trailing
                     punctuation kept); needs two different words

Limits: words are matched whole and case-insensitively against fixed English lists, without parsing, so an
attribute or noun outside the lists is invisible, a word with two senses ("light", "orange") is taken in the
listed one, and a swap can produce an ungrammatical or even a true caption (swapping two objects of one
relation that is symmetric: "a cat next to a dog"). Replacements are seeded (`seed`), so a rerun writes the
same file. Only samples with a local image file are used (tar members have no path to name) and counted
otherwise.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Optional, Sequence

import numpy as np

from clipforge.atomic import atomic_write_text
from clipforge.data.counterfactual import counterfactual_caption
from clipforge.data.selection_set import selection_record
from clipforge.data.sources.base import Source
from clipforge.errors import UsageError
from clipforge.output_dirs import OutputFile
from clipforge.progress import Progress

__all__ = ["KINDS", "ATTRIBUTES", "OBJECTS", "RELATIONS", "make_negative", "write_negatives"]

ATTRIBUTES = {
    "colour": ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey",
               "gray", "silver", "golden"],
    "size": ["small", "large", "big", "tiny", "huge", "tall", "short", "long"],
    "material": ["wooden", "metal", "plastic", "glass", "stone", "paper"],
    "state": ["old", "new", "young", "open", "closed", "empty", "full", "wet", "dry", "dark", "bright", "hot",
              "cold", "striped", "spotted"],
}
OBJECTS = {
    "animal": ["cat", "dog", "horse", "cow", "sheep", "bird", "elephant", "bear", "zebra", "giraffe", "mouse",
               "fish", "duck"],
    "person": ["man", "woman", "boy", "girl", "child", "person", "astronaut", "photographer"],
    "vehicle": ["car", "bus", "truck", "bicycle", "motorcycle", "motorbike", "train", "boat", "plane", "rocket"],
    "furniture": ["table", "chair", "sofa", "bed", "bench", "desk", "shelf"],
    "food": ["apple", "banana", "orange", "cake", "pizza", "sandwich", "carrot", "bowl", "cup", "plate",
             "spoon", "mug", "bottle"],
    "shape": ["circle", "square", "triangle", "star", "line"],
    "thing": ["book", "ball", "box", "bag", "clock", "phone", "camera", "helmet", "flag", "hat", "umbrella",
              "coin", "tree", "flower", "building", "house", "door", "window", "field", "road", "sky", "wall"],
}
RELATIONS = [("on top of", "underneath"), ("in front of", "behind"), ("to the left of", "to the right of"),
             ("inside", "outside"), ("above", "below"), ("over", "under"), ("on", "under"), ("into", "out of"),
             ("with", "without"), ("near", "far from")]
_PLURAL = {w: w + ("es" if w.endswith(("s", "sh", "ch", "x")) else "s") for g in OBJECTS.values() for w in g}
_WORD = re.compile(r"[A-Za-z]+")


def _groups(lists: dict) -> dict[str, str]:
    return {w: g for g, ws in lists.items() for w in ws}


_ATTR_GROUP, _OBJ_GROUP = _groups(ATTRIBUTES), _groups(OBJECTS)
_OBJ_FORM = {**{w: (w, False) for w in _OBJ_GROUP}, **{p: (w, True) for w, p in _PLURAL.items()}}
_OBJ_BASE = {form: base for form, (base, _) in _OBJ_FORM.items()}
_ATTR_BASE = {**{w: w for w in _ATTR_GROUP}, "gray": "grey"}
_RELATION = re.compile(r"\b(" + "|".join(re.escape(a) for a, _ in sorted(
    [*RELATIONS, *[(b, a) for a, b in RELATIONS]], key=lambda r: -len(r[0]))) + r")\b", re.IGNORECASE)
_OPPOSITE = {**{a: b for a, b in RELATIONS}, **{b: a for a, b in RELATIONS if b not in dict(RELATIONS)}}


def _cased(new: str, old: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def _words(caption: str, vocab) -> list[re.Match]:
    return [m for m in _WORD.finditer(caption) if m.group(0).lower() in vocab]


def _swap(caption: str, vocab: dict, form=None) -> Optional[str]:
    """The first two words of `vocab` whose base forms (`vocab[word]`) differ, exchanged; `form(base, old)`
    fits a base into the other's slot (an object noun keeps its slot's plural)."""
    found = _words(caption, vocab)
    base = found[0].group(0).lower() if found else None
    second = next((m for m in found[1:] if vocab[m.group(0).lower()] != vocab[base]), None) if found else None
    if second is None:
        return None
    first = found[0]
    a, b = first.group(0), second.group(0)
    fit = form or (lambda word, slot: word.lower())
    return (caption[:first.start()] + _cased(fit(b, a), a) + caption[first.end():second.start()]
            + _cased(fit(a, b), b) + caption[second.end():])


def _object_form(word: str, slot: str) -> str:
    """Object `word` in the number of the noun it replaces (`slot`)."""
    base = _OBJ_BASE[word.lower()]
    return _PLURAL[base] if _OBJ_FORM[slot.lower()][1] else base


def _replace(caption: str, m: re.Match, new: str) -> str:
    return caption[:m.start()] + _cased(new, m.group(0)) + caption[m.end():]


def _replace_attribute(caption: str, rng) -> Optional[str]:
    found = _words(caption, _ATTR_GROUP)
    if not found:
        return None
    word = found[0].group(0).lower()
    others = [w for w in ATTRIBUTES[_ATTR_GROUP[word]] if w != word and {w, word} != {"grey", "gray"}]
    return _replace(caption, found[0], others[int(rng.integers(len(others)))])


def _replace_object(caption: str, rng) -> Optional[str]:
    found = _words(caption, _OBJ_FORM)
    if not found:
        return None
    base, plural = _OBJ_FORM[found[0].group(0).lower()]
    others = [w for w in OBJECTS[_OBJ_GROUP[base]] if w != base]
    new = others[int(rng.integers(len(others)))]
    return _replace(caption, found[0], _PLURAL[new] if plural else new)


def _replace_relation(caption: str, rng) -> Optional[str]:
    m = _RELATION.search(caption)
    return None if m is None else _replace(caption, m, _OPPOSITE[m.group(0).lower()])


def _shuffle(caption: str, rng) -> Optional[str]:
    body = caption.rstrip(".!?;: ")
    tail = caption[len(body):]
    words = body.split()
    if len({w.lower() for w in words}) < 2:
        return None
    lowered = list(words)
    if words[0][:1].isupper() and not (len(words[0]) > 1 and words[0].isupper()):  # a capital, not an acronym
        lowered[0] = words[0][:1].lower() + words[0][1:]
    while True:
        order = rng.permutation(len(words))
        new = [lowered[i] for i in order]
        if [w.lower() for w in new] != [w.lower() for w in words]:
            break
    if words[0][:1].isupper():
        new[0] = new[0][:1].upper() + new[0][1:]
    return " ".join(new) + tail


KINDS: dict[str, Callable[[str, np.random.Generator], Optional[str]]] = {
    "swap-attribute": lambda c, rng: _swap(c, _ATTR_BASE),
    "swap-object": lambda c, rng: _swap(c, _OBJ_BASE, _object_form),
    "replace-attribute": _replace_attribute,
    "replace-object": _replace_object,
    "replace-number": lambda c, rng: counterfactual_caption(c, rng),
    "replace-relation": _replace_relation,
    "shuffle": _shuffle,
}


def make_negative(caption: str, kind: str, rng: Optional[np.random.Generator] = None) -> Optional[str]:
    """`caption` rewritten by rule `kind` (module doc), or None when the rule finds nothing to change."""
    if kind not in KINDS:
        raise UsageError(f"`kinds`: {kind!r} is not one of {', '.join(KINDS)}")
    new = KINDS[kind](caption, rng if rng is not None else np.random.default_rng(0))
    return None if new is None or new.lower() == caption.lower() else new


def write_negatives(source: Source, out, kinds: Sequence[str] = tuple(KINDS), *, seed: int = 0,
                    overwrite: bool = False, progress: Optional[bool] = None) -> dict:
    """Write a selection JSONL to `out`: per sample with a local image and a caption, one record per kind
    that applies to its first caption ({image, positive, negatives: [one], type: kind, id}).

    Returns {"out", "written", "images", "made": {kind: n}, "nothing_to_change": {kind: n}, "no_caption",
    "no_file"}. `out` is a new file, or replaced with `overwrite` (a JSONL carries no mark of its writer)."""
    kinds = list(dict.fromkeys(kinds))
    if not kinds:
        raise UsageError("`kinds` is empty: name at least one of " + ", ".join(KINDS))
    for k in kinds:
        if k not in KINDS:
            raise UsageError(f"`kinds`: {k!r} is not one of {', '.join(KINDS)}")
    output = OutputFile(overwrite=overwrite, param="out")
    path, _ = output.vet(out)  # refused before the source is read
    rng = np.random.default_rng(seed)
    made, nothing = dict.fromkeys(kinds, 0), dict.fromkeys(kinds, 0)
    lines, images, no_caption, no_file = [], 0, 0, 0
    with Progress(len(source), desc="negatives", unit="sample", progress=progress) as bar:
        for i in range(len(source)):
            s = source[i]
            bar.update(1)
            if not s.path or not os.path.isfile(s.path):
                no_file += 1
                continue
            caption = next((c.strip() for c in s.captions if isinstance(c, str) and c.strip()), None)
            if caption is None:
                no_caption += 1
                continue
            wrote = False
            for kind in kinds:
                neg = make_negative(caption, kind, rng)
                if neg is None:
                    nothing[kind] += 1
                    continue
                made[kind] += 1
                wrote = True
                rec = selection_record(os.path.abspath(s.path), caption, [neg], kind, id=s.id)
                lines.append(json.dumps(rec, ensure_ascii=False))
            images += wrote
    if not lines:
        raise UsageError(f"{source.spec}: no caption had anything the kinds {', '.join(kinds)} could change "
                         f"(nothing written; {no_caption} without a caption, {no_file} without a local file)")
    atomic_write_text(path, "\n".join(lines) + "\n", output=output)
    return {"out": str(path), "written": len(lines), "images": images, "made": made, "nothing_to_change": nothing,
            "no_caption": no_caption, "no_file": no_file}
