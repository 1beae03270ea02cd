"""Caption metrics as the COCO caption evaluation computes them (pycocoevalcap): BLEU-1..4 and CIDEr-D.

    scores = caption_metrics(candidates, references)   # {"bleu_1".."bleu_4", "cider"}
    candidates: one string per image; references: a list of one or more strings per image

Tokens: `tokenize` lower-cases, splits words and punctuation as the PTB tokenizer does for plain captions
("dog's" -> "dog 's") and drops the punctuation tokens pycocoevalcap drops. Everything after it is
pycocoevalcap's arithmetic, reproduced term by term (tests compare with it on fixed strings):

BLEU (Papineni et al. 2002), corpus level: for n = 1..4, p_n = (Σ clipped matching n-grams + 1e-15) /
(Σ candidate n-grams + 1e-9), clipped by the most a single reference holds; BLEU-N = (Π_{n≤N} p_n)^{1/N} ·
BP, BP = exp(1 − r/c) when c < r, c the total candidate length and r the sum over images of the reference
length closest to the candidate's (ties: the shorter).

CIDEr-D (Vedantam et al. 2015): n-gram tf-idf vectors, g(ngram) = tf · (log N − log max(1, df)), df the number
of images whose references contain the n-gram and N the number of images; per n the sum over references of
Σ min(g_c, g_r) g_r / (|g_c| |g_r|) times exp(−δ²/(2σ²)), σ = 6 and δ the difference of the two sentences'
bigram counts (pycocoevalcap counts bigrams as the length); averaged over n = 1..4 and the references,
times 10; the corpus score is the mean over images.

METEOR is not offered: pycocoevalcap's runs a Java jar and no pure-Python implementation is served offline.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import numpy as np

from clipforge.errors import UsageError

__all__ = ["tokenize", "bleu", "cider", "caption_metrics"]

# pycocoevalcap's PTBTokenizer drops these tokens after tokenizing
_PUNCT = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_TOKEN = re.compile(r"[a-z0-9]+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\.\.\.|--|[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text: str) -> str:
    """A caption as space-separated lower-case tokens, punctuation removed (PTB-style, as pycocoevalcap)."""
    return " ".join(t for t in _TOKEN.findall(str(text).lower()) if t not in _PUNCT)


def _ngrams(words: List[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise UsageError(f"{len(candidates)} candidates for {len(references)} reference lists")
    if not candidates:
        raise UsageError("no captions to score")
    if any(len(r) == 0 for r in references):
        raise UsageError("every image needs at least one reference caption")


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> List[float]:
    """Corpus BLEU-1..n of tokenized candidates (one per image) against tokenized references."""
    _check(candidates, references)
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * n, [0] * n
    testlen = reflen = 0
    for cand, refs in zip(candidates, references):
        words = cand.split()
        counts = _ngrams(words, n)
        maxref: Dict[tuple, int] = {}
        lens = []
        for r in refs:
            rw = r.split()
            lens.append(len(rw))
            for g, c in _ngrams(rw, n).items():
                maxref[g] = max(maxref.get(g, 0), c)
        testlen += len(words)
        reflen += min((abs(x - len(words)), x) for x in lens)[1]
        for k in range(n):
            guess[k] += max(0, len(words) - k)
        for g, c in counts.items():
            correct[len(g) - 1] += min(maxref.get(g, 0), c)
    out, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        out.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        out = [b * math.exp(1 - 1 / ratio) for b in out]
    return out


def _vec(counts: Counter, df: Dict[tuple, float], log_n: float, n: int) -> Tuple[list, list, int]:
    vec = [dict() for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for g, tf in counts.items():
        k = len(g) - 1
        vec[k][g] = float(tf) * (log_n - np.log(max(1.0, df.get(g, 0.0))))
        norm[k] += vec[k][g] ** 2
        if k == 1:
            length += tf
    return vec, [np.sqrt(x) for x in norm], length


def cider(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
          sigma: float = 6.0) -> Tuple[float, List[float]]:
    """(corpus CIDEr-D, per-image scores) of tokenized candidates against tokenized references."""
    _check(candidates, references)
    refs_counts = [[_ngrams(r.split(), n) for r in refs] for refs in references]
    df: Dict[tuple, float] = {}
    for refs in refs_counts:
        for g in {g for c in refs for g in c}:
            df[g] = df.get(g, 0.0) + 1
    log_n = np.log(float(len(references)))
    scores = []
    for cand, refs in zip(candidates, refs_counts):
        vc, nc, lc = _vec(_ngrams(cand.split(), n), df, log_n, n)
        total = np.zeros(n)
        for rc in refs:
            vr, nr, lr = _vec(rc, df, log_n, n)
            delta = float(lc - lr)
            val = np.zeros(n)
            for k in range(n):
                for g, w in vc[k].items():
                    val[k] += min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0)
                if nc[k] != 0 and nr[k] != 0:
                    val[k] /= nc[k] * nr[k]
                val[k] *= np.e ** (-(delta ** 2) / (2 * sigma ** 2))
            total += val
        scores.append(float(np.mean(total) / len(refs) * 10.0))
    return float(np.mean(scores)), scores


def caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """{"bleu_1", ..., "bleu_4", "cider"} of raw candidate strings against raw reference strings (tokenized
    first, see `tokenize`)."""
    cands = [tokenize(c) for c in candidates]
    refs = [[tokenize(r) for r in rs] for rs in references]
    b = bleu(cands, refs)
    out = {f"bleu_{k + 1}": float(v) for k, v in enumerate(b)}
    out["cider"] = cider(cands, refs)[0]
    return out
