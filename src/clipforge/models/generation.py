"""Caption generation from a captioning model's decoder: greedy, beam search, nucleus (top-p) sampling, batched.

    ids = generate(model, image_tokens, sot=..., eot=..., pad=..., method="beam", max_tokens=20)
    # -> one list of token ids per image: the caption's tokens, without the start and end tokens

`model.next_token_logits(image_tokens, ids)` -> (B, vocab) is all it needs (`CoCaModel`). Every method starts
from the start token, stops a row at its end token, and ends every row after `max_tokens` caption tokens
(open_clip's `seq_len` is max_tokens + 2: start and end included). The end token is barred before `min_tokens`
(open_clip's MinLengthLogitsProcessor with min_seq_len = min_tokens + 1), and the padding token always — the
caption loss never trains it, and open_clip's generate would take it for the end.

- greedy: the most probable token each step (= open_clip `generation_type="top_k", top_k=1`).
- beam: `beams` hypotheses per image, log-probabilities summed; a finished hypothesis scores
  sum / length^length_penalty (Hugging Face's convention, length counting the end token); the best of the first
  `beams` finished ones per image is returned.
- top_p: sample from the smallest set of tokens whose probability reaches `top_p` (Holtzman et al., "The Curious
  Case of Neural Text Degeneration", 2020) at `temperature`, from `generator` (seeded: reproducible).
No key/value cache: each step re-runs the decoder on the prefix (captions are short).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from clipforge.errors import UsageError

__all__ = ["METHODS", "generate"]

METHODS = ("greedy", "beam", "top_p")
NEG = float("-inf")


def _bar(logits: torch.Tensor, step: int, eot: int, pad: int, min_tokens: int, max_tokens: int) -> torch.Tensor:
    """Logits (..., V) with the padding token barred, the end token barred before `min_tokens` and forced at
    `max_tokens`."""
    logits = logits.clone()
    logits[..., pad] = NEG
    if step < min_tokens:
        logits[..., eot] = NEG
    if step >= max_tokens:
        keep = logits[..., eot].clone()
        logits.fill_(NEG)
        logits[..., eot] = keep.clamp_min(torch.finfo(logits.dtype).min)
    return logits


def _nucleus(logits: torch.Tensor, top_p: float, temperature: float, generator) -> torch.Tensor:
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before this token already reaches top_p
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    pick = torch.multinomial(sorted_p, 1, generator=generator)  # (B, 1) index into the sorted order
    return order.gather(-1, pick).squeeze(-1)


def _sequential(model, image_tokens, sot, eot, pad, max_tokens, min_tokens, choose) -> List[List[int]]:
    B = image_tokens.shape[0]
    seq = torch.full((B, 1), sot, dtype=torch.long, device=image_tokens.device)
    live = torch.ones(B, dtype=torch.bool, device=image_tokens.device)
    out: List[List[int]] = [[] for _ in range(B)]
    for step in range(max_tokens + 1):
        rows = live.nonzero().squeeze(1)
        logits = _bar(model.next_token_logits(image_tokens[rows], seq[rows]), step, eot, pad, min_tokens, max_tokens)
        nxt = torch.full((B,), pad, dtype=torch.long, device=seq.device)
        nxt[rows] = choose(logits)
        for r, t in zip(rows.tolist(), nxt[rows].tolist()):
            if t == eot:
                live[r] = False
            else:
                out[r].append(t)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        if not bool(live.any()):
            break
    return out


def _beam(model, image_tokens, sot, eot, pad, max_tokens, min_tokens, beams, length_penalty) -> List[List[int]]:
    B, K, dev = image_tokens.shape[0], beams, image_tokens.device
    img = image_tokens.repeat_interleave(K, dim=0)
    seq = torch.full((B * K, 1), sot, dtype=torch.long, device=dev)
    scores = torch.full((B, K), NEG, device=dev)
    scores[:, 0] = 0.0  # the first step expands one beam (the others are copies of it)
    finished: List[List[tuple]] = [[] for _ in range(B)]
    for step in range(max_tokens + 1):
        logp = torch.log_softmax(model.next_token_logits(img, seq).float(), dim=-1)
        logp = _bar(logp, step, eot, pad, min_tokens, max_tokens).view(B, K, -1)
        V = logp.shape[-1]
        cand = (scores[..., None] + logp).view(B, K * V)
        top, idx = cand.topk(min(2 * K, K * V), dim=-1)
        new_rows, new_tok, new_scores = [], [], []
        for b in range(B):
            kept = []
            for s, i in zip(top[b].tolist(), idx[b].tolist()):
                beam, tok = divmod(i, V)
                if s == NEG:
                    break
                if tok == eot:
                    if len(finished[b]) < K:
                        body = seq[b * K + beam, 1:].tolist()
                        finished[b].append((s / (len(body) + 1) ** length_penalty, body))
                elif len(kept) < K:
                    kept.append((b * K + beam, tok, s))
                if len(kept) == K:
                    break
            while len(kept) < K:  # nothing left to extend: dead beams that never win
                kept.append((b * K, pad, NEG))
            for row, tok, s in kept:
                new_rows.append(row)
                new_tok.append(tok)
                new_scores.append(s)
        seq = torch.cat([seq[new_rows], torch.tensor(new_tok, device=dev)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=dev).view(B, K)
        if all(len(f) >= K for f in finished):
            break
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


def generate(model, image_tokens: torch.Tensor, *, sot: int, eot: int, pad: int, method: str = "beam",
             max_tokens: int = 20, min_tokens: int = 0, beams: int = 4, top_p: float = 0.9,
             temperature: float = 1.0, length_penalty: float = 1.0,
             generator: Optional[torch.Generator] = None) -> List[List[int]]:
    """Token ids of one caption per image (start and end tokens not included); see the module docstring."""
    if method not in METHODS:
        raise UsageError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}")
    if int(max_tokens) < 1:
        raise UsageError(f"`max_tokens` must be >= 1, got {max_tokens}")
    if not 0 <= int(min_tokens) <= int(max_tokens):
        raise UsageError(f"`min_tokens` must be in [0, `max_tokens`], got {min_tokens}")
    if method == "beam" and int(beams) < 1:
        raise UsageError(f"`beams` must be >= 1, got {beams}")
    if method == "top_p" and not (0 < top_p <= 1 and temperature > 0):
        raise UsageError(f"`top_p` must be in (0, 1] and `temperature` > 0, got {top_p} and {temperature}")
    if not image_tokens.shape[0]:
        return []
    max_tokens, min_tokens = int(max_tokens), int(min_tokens)
    with torch.no_grad():
        if method == "beam":
            return _beam(model, image_tokens, sot, eot, pad, max_tokens, min_tokens, int(beams), length_penalty)
        if method == "greedy":
            return _sequential(model, image_tokens, sot, eot, pad, max_tokens, min_tokens, lambda lg: lg.argmax(-1))
        return _sequential(model, image_tokens, sot, eot, pad, max_tokens, min_tokens,
                           lambda lg: _nucleus(lg, top_p, temperature, generator))
