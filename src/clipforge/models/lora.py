"""LoRA and Comp-LoRA adapters on a model's Linear layers (native; saved and exported in peft's format too).

    cfg = LoRAConfig(rank=8, alpha=16, targets=("attn.qkv", "attn.out"), towers=("image", "text"))
    names = apply_lora(model, cfg)          # wraps the matching Linears in place; freezes everything else
    ...train...
    merge_lora(model)                       # W <- W + dW in every wrapped layer, back to plain Linears

A wrapped layer is a `LoRALinear`: still an `nn.Linear` holding the *same* base weight and bias Parameters
(state-dict keys of the base are unchanged), plus `lora_A` (r, in) and `lora_B` (out, r):

    y = x W^T + b + (alpha / r) * dropout(x) A_eff^T B_eff^T,      dW = (alpha / r) * B_eff A_eff   # (out, in)

with A_eff = A and B_eff = B for LoRA (Hu et al. 2021, peft's `LoraConfig` semantics: A Kaiming-uniform, B zero,
dropout on the branch input). Comp-LoRA (Wang et al. 2025, "Complementary Subspace Low-Rank Adaptation of
Vision-Language Models for Few-Shot Classification") keeps the update out of the pretrained weight's most
informative directions: with W = U S V^T and U_k, V_k its top-k singular vectors,

    side "left":  B_eff = (I - U_k U_k^T) B      (the update writes nothing along W's top-k output directions)
    side "right": A_eff = A (I - V_k V_k^T)      (the update reads nothing along W's top-k input directions)
    side "both":  both projections.

The projector bases are fixed buffers computed once from the base weight (saved with the adapter, so a merge or
an export never depends on a re-run SVD) and add no trainable parameters. Which side and k the paper uses could
not be confirmed (docs/adaptation.md): both are options, left side and k = 16 by default.

Targets are name patterns (fnmatch) on a tower's Linear layers: inside transformer blocks they match the
block-relative name (`attn.qkv`, `attn.out`, `mlp.fc`, `mlp.proj`, `mlp.*`, `*`), elsewhere the tower-relative
name (`proj`, the tower's output projection). `layers` restricts block targets to some block indices
(negative counts from the end). Linears inside `nn.MultiheadAttention` (SigLIP's pooling head) are skipped:
that module reads their weights directly, so a wrapper there would do nothing.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import UsageError
from clipforge.models.budget import check_memory

__all__ = ["LoRAConfig", "LoRALinear", "METHODS", "TOWERS", "MAX_RANK", "adapter_shapes", "check_adapter_memory",
           "apply_lora", "merge_lora", "lora_modules",
           "has_lora", "lora_state_dict", "lora_parameter_count", "mark_only_lora_trainable", "target_names"]

METHODS = ("lora", "comp-lora")
TOWERS = {"image": "visual", "text": "text"}
COMP_SIDES = ("left", "right", "both")
DEFAULT_TARGETS = ("attn.qkv", "attn.out")
MAX_RANK = 1 << 16  # far above any useful rank (a LoRA gains nothing past min(in, out), at most 8192 in a CLIP)


@dataclass(frozen=True)
class LoRAConfig:
    method: str = "lora"  # lora | comp-lora
    rank: int = 8
    alpha: float = 16.0  # scaling = alpha / rank (peft's lora_alpha)
    dropout: float = 0.0  # on the LoRA branch's input, training only
    targets: tuple = DEFAULT_TARGETS
    towers: tuple = ("image", "text")
    layers: Optional[tuple] = None  # block indices to adapt (None: all); negative counts from the end
    comp_k: int = 16  # comp-lora: top singular directions of W kept free of the update
    comp_side: str = "left"  # comp-lora: left (output space) | right (input space) | both

    def __post_init__(self):
        for name in ("targets", "towers", "layers"):  # JSON / YAML give lists
            v = getattr(self, name)
            if isinstance(v, str):
                v = (v,)
            if v is not None and not isinstance(v, (list, tuple)):
                raise UsageError(f"`{name}` must be a list, got {_short(v)}")
            object.__setattr__(self, name, tuple(v) if v is not None else None)
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"`method` {self.method!r} is not an adapter method; choose from {', '.join(METHODS)}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 1 <= self.rank <= MAX_RANK:
            raise UsageError(f"`rank` must be an integer in [1, {MAX_RANK}], got {_short(self.rank)}")
        if not (isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
                and abs(self.alpha) < 1e300 and math.isfinite(self.alpha) and self.alpha > 0):
            raise UsageError(f"`alpha` must be a number > 0, got {_short(self.alpha)}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"`dropout` must be in [0, 1), got {_short(self.dropout)}")
        if not self.targets:
            raise UsageError("`targets` is empty: name the Linear layers to adapt, e.g. attn.qkv, attn.out")
        if not all(isinstance(t, str) for t in self.targets):
            raise UsageError(f"`targets` must be layer name patterns (strings), got {_short(list(self.targets))}")
        if self.layers is not None and not all(isinstance(i, int) and not isinstance(i, bool) and abs(i) <= 1 << 20
                                               for i in self.layers):
            raise UsageError(f"`layers` must be block indices (integers), got {_short(list(self.layers))}")
        bad = [t for t in self.towers if not isinstance(t, str) or t not in TOWERS]
        if bad or not self.towers:
            raise UsageError(f"`towers` must be a non-empty subset of {', '.join(TOWERS)}, got {list(self.towers)}")
        if self.method == "comp-lora":
            if not isinstance(self.comp_k, int) or isinstance(self.comp_k, bool) or not 1 <= self.comp_k <= MAX_RANK:
                raise UsageError(f"`comp_k` must be an integer in [1, {MAX_RANK}], got {_short(self.comp_k)}")
            if self.comp_side not in COMP_SIDES:
                raise UsageError(f"`comp_side` must be one of {', '.join(COMP_SIDES)}, got {self.comp_side!r}")

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise UsageError(f"unknown adapter option(s) {unknown}; valid: {', '.join(sorted(valid))}")
        return cls(**d)


def _short(v) -> str:
    """A value for an error line: a 100-digit rank is shown by its size, not its digits."""
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _top_singular(weight: torch.Tensor, k: int, side: str) -> torch.Tensor:
    """Orthonormal top-k singular vectors of W (out, in): left ones (out, k) or right ones (in, k)."""
    w = weight.detach().float().cpu()
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    k = min(k, u.shape[1])
    return (u[:, :k] if side == "left" else vh[:k].T).contiguous()


class LoRALinear(nn.Linear):
    """An `nn.Linear` (same weight and bias Parameters as the layer it wraps) plus a low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 comp_k: Optional[int] = None, comp_side: str = "left"):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # shared, not copied: the base stays as it was
        self.rank, self.scaling = rank, float(alpha) / rank
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))  # (out, r): dW = 0 at start
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default init of A
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        left = comp_k is not None and comp_side in ("left", "both")
        right = comp_k is not None and comp_side in ("right", "both")
        self.register_buffer("comp_U", _top_singular(base.weight, comp_k, "left").to(**kw) if left else None)
        self.register_buffer("comp_V", _top_singular(base.weight, comp_k, "right").to(**kw) if right else None)

    def effective_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B_eff (out, r), A_eff (r, in)) after the Comp-LoRA projections (the raw factors for LoRA)."""
        a, b = self.lora_A, self.lora_B
        if self.comp_U is not None:
            b = b - self.comp_U @ (self.comp_U.T @ b)  # (I - U U^T) B
        if self.comp_V is not None:
            a = a - (a @ self.comp_V) @ self.comp_V.T  # A (I - V V^T)
        return b, a

    def delta_weight(self) -> torch.Tensor:
        """dW (out, in) = scaling * B_eff A_eff."""
        b, a = self.effective_factors()
        return self.scaling * (b @ a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, a = self.effective_factors()
        h = F.linear(self.lora_dropout(x), a)  # (..., r)
        return F.linear(x, self.weight, self.bias) + self.scaling * F.linear(h, b)

    def merged(self) -> nn.Linear:
        """A plain Linear with weight W + dW (a new Parameter; the shared base weight is left untouched)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        out.weight.requires_grad_(self.weight.requires_grad)
        if self.bias is not None:
            out.bias.requires_grad_(self.bias.requires_grad)
        return out

    def extra_repr(self) -> str:
        comp = "" if self.comp_U is None and self.comp_V is None else (
            f", comp_k={(self.comp_U if self.comp_U is not None else self.comp_V).shape[1]}")
        return super().extra_repr() + f", rank={self.rank}, scaling={self.scaling:g}{comp}"


def _tower_linears(tower: nn.Module):
    """(relative name, block index or None, module) of every Linear a target pattern can name."""
    skip = set()
    for name, mod in tower.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            skip |= {f"{name}.{n}" if name else n for n, _ in mod.named_modules() if n}
    for name, mod in tower.named_modules():
        if not isinstance(mod, nn.Linear) or name in skip:
            continue
        parts = name.split(".")
        if len(parts) > 3 and parts[0] == "transformer" and parts[1] == "blocks" and parts[2].isdigit():
            yield ".".join(parts[3:]), int(parts[2]), name, mod
        else:
            yield name, None, name, mod


def target_names(model, cfg: LoRAConfig) -> list[str]:
    """Full module names (`visual.transformer.blocks.0.attn.qkv`, `text.proj`, ...) that `cfg` adapts.
    A pattern that matches nothing is an error listing what there is."""
    out, seen_patterns, available, empty = [], set(), set(), []
    for tower_key in cfg.towers:
        attr = TOWERS[tower_key]
        tower = getattr(model, attr)
        blocks = getattr(getattr(tower, "transformer", None), "blocks", None)
        n_blocks = len(blocks) if blocks is not None else 0  # a ResNet tower has no transformer blocks
        layers = None if cfg.layers is None or not n_blocks else {
            i % n_blocks for i in cfg.layers if -n_blocks <= i < n_blocks}
        if cfg.layers is not None and n_blocks and len(layers or ()) != len(set(cfg.layers)):
            raise UsageError(f"`layers` {list(cfg.layers)} out of range for the {tower_key} tower's "
                             f"{n_blocks} blocks")
        here, tower_available = [], set()
        for rel, block, name, _ in _tower_linears(tower):
            tower_available.add(rel)
            for pat in cfg.targets:
                if fnmatch.fnmatchcase(rel, pat):
                    seen_patterns.add(pat)
                    if block is None or layers is None or block in layers:
                        here.append(f"{attr}.{name}")
                    break
        if not here and len(cfg.towers) > 1:
            empty.append((tower_key, tower_available))
        available |= tower_available
        out += here
    missing = [p for p in cfg.targets if p not in seen_patterns]
    if missing:
        raise UsageError(f"`targets` {missing} match no Linear layer; the layers are: {', '.join(sorted(available))}")
    if not out:
        raise UsageError("`targets` and `layers` select no layer to adapt")
    if empty:
        tower_key, tower_available = empty[0]
        raise UsageError(f"`targets` {list(cfg.targets)} select no layer of the {tower_key} tower; its Linear "
                         f"layers are: {', '.join(sorted(tower_available)) or 'none'} (or leave the tower out "
                         f"of `towers`)")
    return out


def adapter_shapes(model: nn.Module, cfg: LoRAConfig, names: Optional[Sequence[str]] = None) -> dict:
    """name -> shape of every tensor the adapter `cfg` adds to `model` (`lora_A` (r, in), `lora_B` (out, r),
    Comp-LoRA's bases), from the layers' sizes alone: nothing is allocated."""
    out = {}
    for name in names if names is not None else target_names(model, cfg):
        mod = model.get_submodule(name)
        n_in, n_out = mod.in_features, mod.out_features
        out[f"{name}.lora_A"], out[f"{name}.lora_B"] = (cfg.rank, n_in), (n_out, cfg.rank)
        if cfg.method == "comp-lora":
            k = min(cfg.comp_k, n_in, n_out)
            if cfg.comp_side in ("left", "both"):
                out[f"{name}.comp_U"] = (n_out, k)
            if cfg.comp_side in ("right", "both"):
                out[f"{name}.comp_V"] = (n_in, k)
    return out


def check_adapter_memory(model: nn.Module, cfg: LoRAConfig, names: Sequence[str]) -> None:
    """`ClipforgeError` when the adapter `cfg` on layers `names` could not be allocated here."""
    item = next((p.element_size() for p in model.parameters()), 4)
    n = sum(math.prod(s) for s in adapter_shapes(model, cfg, names).values())
    check_memory(n * item, f"a rank-{cfg.rank} adapter on {len(names)} layers ({n / 1e6:,.1f} M values)")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def mark_only_lora_trainable(model: nn.Module) -> int:
    """Freeze everything but the LoRA factors; returns the number of trainable parameters."""
    n = 0
    for name, p in model.named_parameters():
        train = name.endswith(".lora_A") or name.endswith(".lora_B")
        p.requires_grad_(train)
        n += p.numel() if train else 0
    return n


def apply_lora(model: nn.Module, cfg: LoRAConfig, freeze: bool = True) -> list[str]:
    """Wrap the Linear layers `cfg` selects in `LoRALinear` (in place) and, with `freeze`, leave only the LoRA
    factors trainable. Returns the wrapped modules' names. A model already carrying LoRA is refused."""
    if has_lora(model):
        raise UsageError("this model already carries a LoRA adapter: merge it first (merge_lora) to stack another")
    names = target_names(model, cfg)
    check_adapter_memory(model, cfg, names)  # priced before a factor is allocated
    comp_k = cfg.comp_k if cfg.method == "comp-lora" else None
    for name in names:
        _set_module(model, name, LoRALinear(model.get_submodule(name), cfg.rank, cfg.alpha, cfg.dropout,
                                            comp_k, cfg.comp_side))
    if freeze:
        mark_only_lora_trainable(model)
    model.lora_config = cfg
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors only: `<module>.lora_A`, `.lora_B` and the Comp-LoRA bases `.comp_U` / `.comp_V`."""
    out = {}
    for name, mod in lora_modules(model).items():
        for key in ("lora_A", "lora_B", "comp_U", "comp_V"):
            t = getattr(mod, key)
            if t is not None:
                out[f"{name}.{key}"] = t.detach()
    return out


def lora_parameter_count(model: nn.Module) -> int:
    """Trainable adapter parameters: rank * (in + out) per wrapped layer."""
    return sum(m.lora_A.numel() + m.lora_B.numel() for m in lora_modules(model).values())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its layer's weight (in place) and unwrap it; returns the model."""
    for name, mod in lora_modules(model).items():
        _set_module(model, name, mod.merged())
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model

