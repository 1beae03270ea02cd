"""Caption text helpers: sentences of a long caption, sub-caption sampling, a caption's first sentence.

DreamLIP splits long (MLLM-written) captions into sentences and samples a few of them per image as extra
positives; Long-CLIP pairs each long caption with its first sentence (`caption.split(". ")[0]` in its
released data code) as the short summary. `split_sentences` is the one splitter both use: a sentence ends
at ".", "!" or "?" followed by white space, except after common abbreviations ("e.g.", "Mr.", "St.") and
single-letter initials, so "3.5 m" and "J. Smith" stay whole.

`cap_captions` is the one cap every reader applies to the captions it yields: each caption is cut to
`max_caption_bytes` of UTF-8 (at a character boundary; `DEFAULT_MAX_CAPTION_BYTES`, 4096, is some 600 words,
far beyond any text tower's context), so a 100 MB cell never reaches a tokenizer, nor is re-tokenized every
step. Readers count each cut caption's sample as `caption_truncated` (kept, not skipped).
"""
from __future__ import annotations

import re

import numpy as np

from clipforge.data.sample import text_safe
from clipforge.errors import UsageError

DEFAULT_MAX_CAPTION_BYTES = 4096

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


def cap_caption(text: str, max_bytes: int | None = DEFAULT_MAX_CAPTION_BYTES) -> tuple[str, bool]:
    """(`text` as valid text, cut to at most `max_bytes` bytes of UTF-8 at a character boundary; whether it
    was cut). `max_bytes=None` keeps it whole. Never encodes more than `max_bytes` characters of a huge text."""
    if max_bytes is None:
        return text_safe(text), False
    cut = len(text) > max_bytes  # more characters than bytes allowed: over the cap whatever they are
    head = text_safe(text[:max_bytes] if cut else text)  # text_safe may lengthen (lone surrogates -> \udcXX)
    data = head.encode("utf-8")
    if len(data) <= max_bytes:
        return head, cut
    return data[:max_bytes].decode("utf-8", "ignore"), True  # "ignore" drops only a split last character


def cap_captions(captions, max_bytes: int | None = DEFAULT_MAX_CAPTION_BYTES) -> tuple[list[str], int]:
    """Every caption through `cap_caption`: (the captions, how many were cut)."""
    out, n_cut = [], 0
    for c in captions:
        c, cut = cap_caption(c, max_bytes)
        out.append(c)
        n_cut += cut
    return out, n_cut


def check_byte_cap(value, name: str, allow_none: bool = True):
    """`value` if it is a positive integer (or None where `allow_none`), else a `UsageError` naming `name`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"`{name}` must be a positive number of bytes{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return value
