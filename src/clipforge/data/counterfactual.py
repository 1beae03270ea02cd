"""Counterfactual number captions for the counting objective ("Teaching CLIP to Count to Ten").

A caption with a number from two to ten — as a word ("three dogs") or as digits ("3 dogs") — gets a
counterfactual copy with that number replaced by a different one from the same range, in the same form and
capitalisation ("Three dogs" -> "Six dogs"); the counting loss then asks the image to prefer its true caption
over that hard negative. Captions without such a number (including "one"/"a": the paper counts from two)
get none, so the counting term is non-zero exactly for batches with counting captions. With several numbers
the first one is swapped.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

NUMBER_WORDS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_VALUES = {w: i + 2 for i, w in enumerate(NUMBER_WORDS)}
# A whole word two..ten, or the digits 2..10 standing alone (not part of 3.5, 2024, 4th or x2).
_NUMBER = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b|(?<![\w.,])(10|[2-9])(?![\w]|[.,]\d)",
                     re.IGNORECASE)


def find_number(caption: str) -> Optional[tuple[int, int, int]]:
    """(start, end, value) of the first counting number in `caption`, or None."""
    m = _NUMBER.search(caption)
    if m is None:
        return None
    word = m.group(0)
    return m.start(), m.end(), int(word) if word.isdigit() else _VALUES[word.lower()]


MAX_COUNT = 10


def counterfactual_caption(caption: str, rng: np.random.Generator, max_count: int = MAX_COUNT) -> Optional[str]:
    """`caption` with its first counting number replaced by a different one from 2..max_count, or None without one.

    max_count (3..10) should be the largest count the training data shows: a replacement the true captions never
    contain ("seven" in a set that counts to six) is a text-only shortcut — the text tower learns that such
    captions match no image and the counting term falls without the image tower learning to count."""
    if not 3 <= max_count <= MAX_COUNT:
        raise ValueError(f"max_count must be in [3, {MAX_COUNT}], got {max_count}")
    found = find_number(caption)
    if found is None:
        return None
    start, end, value = found
    choices = [v for v in range(2, max_count + 1) if v != value]
    new = int(choices[int(rng.integers(len(choices)))])
    old = caption[start:end]
    if old.isdigit():
        text = str(new)
    else:
        text = NUMBER_WORDS[new - 2]
        if old.isupper() and len(old) > 1:
            text = text.upper()
        elif old[0].isupper():
            text = text.capitalize()
    return caption[:start] + text + caption[end:]
