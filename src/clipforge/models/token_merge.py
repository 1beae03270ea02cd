"""Token merging for ViT image towers: fewer tokens per block, a measured accuracy cost (docs/token_merge.md).

    model = load_model("ckpt/final")
    apply_token_merge(model, 4)                                     # ToMe, 4 tokens merged in every block
    apply_token_merge(model, TokenMerge((8, 8, 4, 4, 0), "pitome"))  # PiToMe, one count per block
    apply_token_merge(model, None)                                  # back to the exact tower

Two rules choose which tokens merge; both run between a block's attention and its MLP, average the merged
tokens weighted by how many patches each already holds ("size"), and let later attention count a merged token
once per patch it holds (proportional attention: log(size) added to the attention logits). The class token is
never merged, so class-token pooling reads the same row.

- **tome** (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023): bipartite soft matching. The
  tokens are split alternately into A and B; each A token's most similar B token (cosine similarity of the
  attention keys, averaged over heads) is its edge; the `r` A tokens with the most similar edges merge into
  their B partners.
- **pitome** (Tran et al., "Accelerating Transformers with Spectrum-Preserving Token Merging", NeurIPS 2024):
  an energy score per token, the mean over all tokens j of ELU(cos(x_i, x_j) - m, alpha), on the block's
  hidden states. Tokens in large clusters of similar tokens score high; the 2r highest form the mergeable
  set, split alternately into A and B, and every A token merges into its most similar B token; every other
  token is protected (kept as it is). The margin falls with depth: block l of L uses m = margin * (1 - l / L).

`r` is capped per block at half the mergeable tokens. With every `r` 0 the tower runs its exact path
(bit-identical output). Text towers are not merged: they are causal and pool one row at a position each
caption decides, and at 10-20 real tokens a caption has little to merge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from clipforge.errors import UsageError
from clipforge.models.layers import Keep, take_row

__all__ = ["TokenMerge", "METHODS", "token_merge_setting", "apply_token_merge", "merged_tokens",
           "merged_pooled", "bipartite_soft_matching", "pitome_matching", "merge_weighted", "token_counts"]

METHODS = ("tome", "pitome")
Merge = Callable[[torch.Tensor], torch.Tensor]  # (B, N, C) -> (B, N - r, C), summing what it merges


@dataclass(frozen=True)
class TokenMerge:
    """How a ViT tower merges tokens. `r`: tokens merged in every block (an int), or one count per block (a
    shorter tuple leaves the later blocks unmerged). `method`: tome | pitome. `prop_attn`: proportional
    attention. `margin` / `alpha`: PiToMe's energy margin at the first block and its ELU slope."""

    r: Union[int, tuple] = 0
    method: str = "tome"
    prop_attn: bool = True
    margin: float = 0.9
    alpha: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"`merge_method` {self.method!r} is unknown; valid: {', '.join(METHODS)}")
        counts = self.r if isinstance(self.r, tuple) else (self.r,)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise UsageError(f"`token_merge` must be tokens per block (an integer >= 0) or one such count per "
                             f"block, got {self.r!r}")
        if not 0.0 <= self.margin < 1.0 or self.alpha <= 0:
            raise UsageError(f"PiToMe needs 0 <= `margin` < 1 and `alpha` > 0, got {self.margin}, {self.alpha}")

    def schedule(self, layers: int) -> list:
        """Tokens to merge in each of `layers` blocks (before the per-block cap)."""
        if isinstance(self.r, int):
            return [self.r] * layers
        if len(self.r) > layers:
            raise UsageError(f"`token_merge` gives {len(self.r)} per-block counts for a tower of {layers} blocks")
        return list(self.r) + [0] * (layers - len(self.r))

    @property
    def active(self) -> bool:
        return any(self.r) if isinstance(self.r, tuple) else self.r > 0

    def to_dict(self) -> dict:
        """What an index or a result records (`token_merge_setting` reads it back)."""
        return {"r": list(self.r) if isinstance(self.r, tuple) else self.r, "method": self.method,
                "prop_attn": self.prop_attn, "margin": self.margin, "alpha": self.alpha}

    def describe(self) -> str:
        r = ",".join(map(str, self.r)) if isinstance(self.r, tuple) else str(self.r)
        return f"{self.method} r={r}"


def token_merge_setting(value, method: Optional[str] = None) -> Optional[TokenMerge]:
    """A `TokenMerge` from what a caller gives: None, an int, per-block ints (a sequence, or a string such as
    "8" or "8,8,4"), a recorded dict, or a `TokenMerge`; `method` overrides the method. None when it merges
    nothing."""
    if value is None:
        return None
    if isinstance(value, TokenMerge):
        tm = value if method is None else TokenMerge(value.r, method, value.prop_attn, value.margin, value.alpha)
    elif isinstance(value, dict):
        known = {"r", "method", "prop_attn", "margin", "alpha"}
        if set(value) - known or "r" not in value:
            raise UsageError(f"a recorded `token_merge` needs key r and only {', '.join(sorted(known))}; got "
                             f"{', '.join(sorted(map(str, value)))}")
        d = dict(value)
        if method is not None:
            d["method"] = method
        return token_merge_setting(TokenMerge(**{**d, "r": _counts(d["r"])}))
    else:
        tm = TokenMerge(_counts(value), method or "tome")
    return tm if tm.active else None


def _counts(value) -> Union[int, tuple]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not all(p.isascii() and p.isdigit() for p in parts):
            raise UsageError(f"`token_merge` {value!r}: give tokens per block (e.g. 4) or one count per block "
                             "(e.g. 8,8,4,0)")
        nums = [int(p) for p in parts]
        return nums[0] if len(nums) == 1 else tuple(nums)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def _vit_tower(model):
    """`model`'s image tower (or `model` itself, a tower) if it merges tokens: a class that declares
    `token_merge` itself (`vision.VisionTower`; a subclass with its own forward does not inherit it)."""
    tower = getattr(model, "visual", model)
    if "token_merge" not in vars(type(tower)):
        raise UsageError(f"`token_merge` needs a ViT image tower; this model's is {type(tower).__name__}")
    return tower


def apply_token_merge(model, setting, method: Optional[str] = None):
    """Set token merging on `model`'s ViT image tower, in place (None or r = 0: clear it, for any model);
    returns the model. A tower of another kind is refused in one line."""
    tm = token_merge_setting(setting, method)
    if tm is None:
        tower = getattr(model, "visual", model)
        if "token_merge" in vars(type(tower)):
            tower.token_merge = None
        return model
    tower = _vit_tower(model)
    tm.schedule(len(tower.transformer.blocks))  # a schedule longer than the tower fails now
    tower.token_merge = tm
    return model


# -- matching rules: each returns merge(x) for (B, N, C) tensors, summing the tokens it merges --

def bipartite_soft_matching(metric: torch.Tensor, r: int, protect_first: bool) -> Optional[Merge]:
    """ToMe's rule on `metric` (B, N, c). `protect_first`: token 0 (the class token) is never merged and stays
    first. None when nothing can merge."""
    n = metric.shape[1]
    r = min(r, (n - int(protect_first)) // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        m = F.normalize(metric.float(), dim=-1)
        sim = m[:, ::2] @ m[:, 1::2].transpose(1, 2)  # (B, |A|, |B|): A = even positions, B = odd
        if protect_first:
            sim[:, 0] = -math.inf  # the class token (A's first) has no edge
        best, partner = sim.max(dim=-1)  # (B, |A|)
        order = best.argsort(dim=-1, descending=True)
        src, kept = order[:, :r], order[:, r:]
        if protect_first:
            kept = kept.sort(dim=-1).values  # the class token, A's position 0, first again
        dst = partner.gather(1, src)

    def merge(x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, ::2], x[:, 1::2]
        c = x.shape[-1]
        kept_a = a.gather(1, kept[..., None].expand(-1, -1, c))
        moved = a.gather(1, src[..., None].expand(-1, -1, c))
        b = b.scatter_reduce(1, dst[..., None].expand(-1, -1, c), moved, reduce="sum")
        return torch.cat([kept_a, b], dim=1)

    return merge


def pitome_matching(metric: torch.Tensor, r: int, protect_first: bool, margin: float,
                    alpha: float) -> Optional[Merge]:
    """PiToMe's rule on `metric` (B, N, c): merge among the 2r highest-energy tokens, protect the rest (the
    class token, when `protect_first`, always: it stays first). None when nothing can merge."""
    lead = int(protect_first)
    n = metric.shape[1] - lead
    r = min(r, n // 2)
    if r <= 0:
        return None
    with torch.no_grad():
        m = F.normalize(metric[:, lead:].float(), dim=-1)
        sim = m @ m.transpose(1, 2)  # (B, n, n)
        energy = F.elu(sim - margin, alpha=alpha).mean(dim=-1)
        order = energy.argsort(dim=-1, descending=True)
        a, b, kept = order[:, :2 * r:2], order[:, 1:2 * r:2], order[:, 2 * r:]
        pair = sim.gather(1, a[..., None].expand(-1, -1, n)).gather(2, b[:, None, :].expand(-1, r, -1))
        dst = pair.argmax(dim=-1)  # (B, r): each A token's most similar B token

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        body = x[:, lead:]
        take = lambda idx: body.gather(1, idx[..., None].expand(-1, -1, c))  # noqa: E731
        merged = take(b).scatter_reduce(1, dst[..., None].expand(-1, -1, c), take(a), reduce="sum")
        return torch.cat([x[:, :lead], take(kept), merged], dim=1)

    return merge


def merge_weighted(merge: Merge, x: torch.Tensor, size: Optional[torch.Tensor]):
    """Merge `x` (B, N, C) as a size-weighted mean: (x', size') with size (B, N, 1) the patches per token."""
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    x = merge(x * size)
    size = merge(size)
    return x / size, size


# -- the merged forward of a transformer --

def _attention(attn, h: torch.Tensor, size: Optional[torch.Tensor], keep: Optional[Keep]):
    """`layers.Attention` with proportional attention; also the keys averaged over heads (ToMe's metric)."""
    B, N, C = h.shape
    q, k, v = attn.qkv(h).view(B, N, 3, attn.heads, C // attn.heads).permute(2, 0, 3, 1, 4)
    bias = None if size is None else size.log().to(q.dtype).view(B, 1, 1, N)
    rows = N
    if keep is not None:
        q, rows = take_row(q.transpose(1, 2), keep).transpose(1, 2), 1
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attn.out(o.transpose(1, 2).reshape(B, rows, C)), k.mean(dim=1)


def _block(blk, x: torch.Tensor, size: Optional[torch.Tensor], r: int, tm: TokenMerge, margin: float,
           protect_first: bool, keep: Optional[Keep]):
    """`layers.Block.forward` with a merge of `r` tokens between attention and MLP (none with `keep`)."""
    rows = x if keep is None else take_row(x, keep)
    attn_size = size if tm.prop_attn else None
    if blk.norm_first:
        a, keys = _attention(blk.attn, blk.ln_1(x), attn_size, keep)
        x = rows + a
    else:
        a, keys = _attention(blk.attn, x, attn_size, keep)
        x = blk.ln_1(rows + a)
    merge = None
    if r > 0 and keep is None:
        merge = (bipartite_soft_matching(keys, r, protect_first) if tm.method == "tome" else
                 pitome_matching(x, r, protect_first, margin, tm.alpha))
    if merge is not None:
        x, size = merge_weighted(merge, x, size)
    if blk.norm_first:
        return x + blk.mlp(blk.ln_2(x)), size
    return blk.ln_2(x + blk.mlp(x)), size


def merged_tokens(transformer, x: torch.Tensor, tm: TokenMerge, protect_first: bool,
                  keep: Optional[Keep] = None):
    """`layers.Transformer.forward` with token merging: (tokens (B, N', W), size (B, N', 1) or None when
    nothing merged). With `keep`, the last block computes only that row, as the exact path does."""
    blocks = transformer.blocks
    last = len(blocks) - 1
    schedule = tm.schedule(len(blocks))
    size = None
    for i, blk in enumerate(blocks):
        k = keep if i == last else None
        margin = tm.margin * (1 - i / len(blocks))
        args = (blk, x, size, schedule[i], tm, margin, protect_first, k)
        if transformer.grad_checkpointing and torch.is_grad_enabled():
            x, size = checkpoint(_block, *args, use_reentrant=False)
        else:
            x, size = _block(*args)
    return x, size


def merged_pooled(tower, x: torch.Tensor) -> torch.Tensor:
    """A `vision.VisionTower`'s pooled, projected output (B, D) from its embedded tokens `x` (B, N, W), through
    merged blocks: the class token's row; the size-weighted mean of the tokens (each stands for `size`
    patches); or the attention-pooling head over the merged tokens (not size-weighted)."""
    tm, pool = tower.token_merge, tower.cfg.pool
    if pool == "cls":
        y, _ = merged_tokens(tower.transformer, x, tm, protect_first=True, keep=0)
        return tower.proj(tower.ln_post(y)[:, 0])
    y, size = merged_tokens(tower.transformer, x, tm, protect_first=False)
    y = tower.ln_post(y)
    if pool == "mean":
        pooled = y.mean(dim=1) if size is None else (y * size).sum(dim=1) / size.sum(dim=1)
    else:
        pooled = tower.head(y)
    return tower.proj(pooled)


def token_counts(n_tokens: int, layers: int, tm: Optional[TokenMerge], protect_first: bool) -> list:
    """Tokens each block's MLP sees, from the per-block caps alone (for FLOP counts). A class-token tower's
    last block computes only its class row and merges nothing."""
    out = []
    schedule = tm.schedule(layers) if tm is not None else [0] * layers
    for i in range(layers):
        last = protect_first and i == layers - 1
        r = 0 if last else min(schedule[i], (n_tokens - int(protect_first)) // 2)
        n_tokens -= r
        out.append(n_tokens)
    return out
