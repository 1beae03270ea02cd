"""Caption text helpers: sentences of a long caption, sub-caption sampling, a caption's first sentence.

DreamLIP splits long (MLLM-written) captions into sentences and samples a few of them per image as extra
positives; Long-CLIP pairs each long caption with its first sentence (`caption.split(". ")[0]` in its
released data code) as the short summary. `split_sentences` is the one splitter both use: a sentence ends
at ".", "!" or "?" followed by white space, except after common abbreviations ("e.g.", "Mr.", "St.") and
single-letter initials, so "3.5 m" and "J. Smith" stay whole.
"""
from __future__ import annotations

import re

import numpy as np

_ABBREVIATIONS = {"e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "st.", "no.", "approx.", "fig."}
_END = re.compile(r"[.!?]+[\"')\]]*\s+")


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, stripped, in order (a text without a sentence end is one sentence)."""
    text = " ".join(str(text).split())
    out, start = [], 0
    for m in _END.finditer(text):
        piece = text[start:m.end()].strip()
        last = piece.split(" ")[-1].lower()
        if last in _ABBREVIATIONS or re.fullmatch(r"[a-z]\.", last):
            continue
        out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def first_sentence(text: str) -> str:
    """The first sentence of `text` (the whole text when it has one sentence)."""
    parts = split_sentences(text)
    return parts[0] if parts else str(text).strip()


def sub_captions(captions: list[str], k: int, rng: np.random.Generator, exclude: str = "") -> list[str]:
    """Up to `k` distinct sentences drawn (without replacement) from all of `captions`' sentences, other than
    `exclude` (the caption already used as the main positive). Fewer when there are fewer sentences."""
    pool = list(dict.fromkeys(s for c in captions for s in split_sentences(c) if s != exclude.strip()))
    if len(pool) <= k:
        return pool
    return [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
