"""timm image towers (`vision.arch: timm`): any timm image model, pooled by timm, then a projection head.

The trunk is `timm.create_model(model, pretrained=False, num_classes=0, global_pool=pool)`, built lazily: timm
is an optional extra (`pip install 'clipforge[timm]'`; it needs torchvision), and a config naming a timm tower
reads, validates, counts and saves without it — only building the tower needs timm, and then a missing or
broken timm is one line. Weights never come from the hub: `vision.pretrained` names a local file (safetensors,
or a pickle read with `torch.load(weights_only=True)`: tensors only, no code runs), and the classifier keys it
may hold (`pretrained_cfg["classifier"]`) are dropped (`pretrained_sources.read_timm_state`).

`features(pixels)` is timm's own embedding, `forward_head(forward_features(x), pre_logits=True)`; tokens are
the last feature map's cells (a ViT's patch tokens, prefix tokens dropped) through the same head, when their
width is the pooled width. Locking follows timm's `group_matcher` (fine groups): the first group is the stem,
each later one a block, and a trailing group of parameters no matcher names (a head conv, a final norm) is
what unlocking any block also unlocks, as EfficientNet's head conv. `resolve_timm(cfg)` reads, once, what
the config leaves to the model: the pooled width, the input size and (by `timm_preprocess`) the pretrained_cfg's
mean, std, interpolation and crop.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import List, Optional

import torch
from torch import nn

from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.batchnorm import keep_frozen_norms_eval
from clipforge.models.output import TowerOutput
from clipforge.models.projection import projection_head

__all__ = ["TIMM_EXTRA", "import_timm", "timm_available", "TimmTower", "timm_tower", "resolve_timm"]

log = logging.getLogger(__name__)

TIMM_EXTRA = "pip install 'clipforge[timm]' (timm needs a torchvision built for this torch)"
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
_CROP_MODES = {"center": "shortest", "squash": "squash"}


@functools.lru_cache(maxsize=1)
def _load_timm():
    """(timm, None) or (None, why): importing timm imports torchvision, which fails to load (RuntimeError,
    OSError) beside a torch it was not built for; the outcome is kept, so a failure is paid once."""
    try:
        import timm
        import timm.data  # noqa: F401  (resolve_data_config)
        return timm, None
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision's operator registration failing
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def timm_available() -> bool:
    return _load_timm()[0] is not None


def import_timm():
    """The timm module, or one line naming the extra to install."""
    timm, why = _load_timm()
    if timm is None:
        raise ClipforgeError(f"vision.arch 'timm' needs timm, which did not import ({why}): {TIMM_EXTRA}")
    return timm


def _pretrained_cfg(trunk) -> dict:
    return dict(getattr(trunk, "pretrained_cfg", None) or {})


def _create(cfg, image_size: Optional[int] = None) -> nn.Module:
    """The timm trunk of a `TimmConfig` (random init). A model of fixed input size (ViTs) is built for
    `image_size` when that differs from its own."""
    timm = import_timm()
    kwargs = {} if cfg.pool is None else {"global_pool": cfg.pool}
    try:
        trunk = timm.create_model(cfg.model, pretrained=False, num_classes=0, **kwargs)
        native = _pretrained_cfg(trunk).get("input_size")
        if (image_size and native and _pretrained_cfg(trunk).get("fixed_input_size")
                and int(native[-1]) != int(image_size)):
            trunk = timm.create_model(cfg.model, pretrained=False, num_classes=0, img_size=int(image_size), **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise UsageError(f"vision.model: timm has no model {cfg.model!r} (timm.list_models() names them)"
                             ) from None
        raise ClipforgeError(f"timm could not build {cfg.model!r}: {str(e).splitlines()[0][:200]}") from None
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise UsageError(f"timm could not build {cfg.model!r} with vision.pool {cfg.pool!r} / vision.image_size "
                         f"{image_size}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                         ) from None
    return trunk


def _pooled(trunk: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    return trunk.forward_head(fmap, pre_logits=True)


def _pooled_dim(cfg, image_size: int) -> int:
    """The width a `TimmConfig`'s trunk pools to, read from the model: a forward on the meta device (shapes
    only; `num_features` is not it for every pooling, e.g. catavgmax doubles it)."""
    with torch.device("meta"):
        trunk = _create(cfg, image_size)
        x = torch.empty(1, 3, image_size, image_size)
        return int(_pooled(trunk, trunk.forward_features(x)).shape[-1])


class ParamGroup:
    """One lockable group of a timm trunk: parameter names and the parameters (what `lock_tower` unlocks)."""

    def __init__(self, trunk: nn.Module, names: List[str]):
        self.names = list(names)
        self._trunk = trunk

    def parameters(self):
        return (self._trunk.get_parameter(n) for n in self.names)

    def __repr__(self) -> str:
        return f"ParamGroup({self.names[0]} .. {self.names[-1]}, {len(self.names)} tensors)"


def _matcher_patterns(matcher) -> list:
    pats = []
    for spec in matcher.values():
        if spec is None:
            continue
        for s in ([spec] if isinstance(spec, str) else spec):
            pats.append(re.compile(s if isinstance(s, str) else s[0]))
    return pats


def param_groups(trunk: nn.Module):
    """(blocks, after): timm's fine parameter groups of `trunk` after its stem, and the trailing group no matcher
    names (empty when there is none). A model without a `group_matcher` has no blocks: it locks whole only."""
    matcher = getattr(trunk, "group_matcher", None)
    if matcher is None:
        return [], []
    from timm.models import group_parameters  # timm is imported by now (this trunk is its)

    spec = matcher(coarse=False)
    groups = [names for _, names in sorted(group_parameters(trunk, spec).items())]
    if len(groups) < 2:
        return [], []
    pats = _matcher_patterns(spec) if isinstance(spec, dict) else None
    tail = []
    if pats is not None and not any(p.match(n) for p in pats for n in groups[-1]):
        tail = groups.pop()
    return [ParamGroup(trunk, g) for g in groups[1:]], ([ParamGroup(trunk, tail)] if tail else [])


class TimmTower(nn.Module):
    """The image tower: a timm trunk (`self.model`, no classifier) pooled by timm -> projection head (`head`).

    forward(pixels, return_tokens) -> TowerOutput(pooled (B, D), tokens (B, N, D) or None)."""

    def __init__(self, cfg, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.model = _create(cfg, cfg.image_size)
        size = cfg.image_size or int(_pretrained_cfg(self.model).get("input_size", (3, 224, 224))[-1])
        self.feature_dim = int(cfg.feature_dim) or _pooled_dim(cfg, size)
        self.head = projection_head(cfg.head, self.feature_dim, embed_dim, cfg.head_hidden)
        self._groups = None

    def _lock_groups(self):
        if self._groups is None:
            self._groups = param_groups(self.model)
        return self._groups

    @property
    def blocks(self) -> list:  # what tower locking counts ("unlock the last N blocks")
        return self._lock_groups()[0]

    def after_blocks(self) -> list:  # what unlocking any block also unlocks: the trailing group (head conv, norm)
        return self._lock_groups()[1]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's own checkpointing, except for models with BatchNorm (recomputation would update its running
        statistics twice), for which this is a no-op as for EfficientNet."""
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            if hasattr(self.model, "set_grad_checkpointing"):
                self.model.set_grad_checkpointing(enable)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, feature_dim)
        return _pooled(self.model, self.model.forward_features(pixels.to(self.dtype)))

    def _tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        if fmap.ndim == 4:  # (B, C, h, w) -> (B, h*w, C)
            cells = fmap.flatten(2).transpose(1, 2)
        else:  # (B, N, C): a transformer's tokens, prefix (class, register) tokens dropped
            cells = fmap[:, int(getattr(self.model, "num_prefix_tokens", 0) or 0):]
        if cells.shape[-1] != self.feature_dim:
            raise UsageError(f"timm model {self.cfg.model!r}: its last feature map has {cells.shape[-1]} channels "
                             f"but pools to {self.feature_dim}, so it gives no tokens (the head maps the pooled "
                             "width only)")
        return self.head(cells)

    def forward(self, pixels: torch.Tensor, return_tokens: bool = False) -> TowerOutput:
        fmap = self.model.forward_features(pixels.to(self.dtype))
        pooled = self.head(_pooled(self.model, fmap))
        return TowerOutput(pooled, self._tokens(fmap) if return_tokens else None)

    def train(self, mode: bool = True):
        """Frozen BatchNorm layers stay in eval mode (a locked trunk keeps its statistics; models/batchnorm.py)."""
        return keep_frozen_norms_eval(super().train(mode))


class _HeadOnly(nn.Module):
    def __init__(self, cfg, embed_dim: int):
        super().__init__()
        self.head = projection_head(cfg.head, max(cfg.feature_dim, 1), embed_dim, cfg.head_hidden)  # 0: unread


def timm_tower(cfg, embed_dim: int) -> nn.Module:
    """The tower of a `TimmConfig`. Counting parameters builds towers on the meta device: without timm, a timm
    tower then counts as its projection head alone (as a Hugging Face tower whose config is not read yet), so
    its config still validates; building it for real needs timm."""
    if not timm_available() and torch.get_default_device().type == "meta":
        return _HeadOnly(cfg, embed_dim)
    return TimmTower(cfg, embed_dim)


def resolve_timm(cfg):
    """`cfg` (a CLIPConfig) with what its timm tower leaves to the model read in: `vision.feature_dim`,
    `vision.image_size` (the pretrained_cfg's input size when null) and, with `vision.timm_preprocess`, the
    pretrained_cfg's mean, std, interpolation and crop (timm's own `resolve_data_config`). Unchanged when the
    vision tower is not timm's or is resolved already (`feature_dim` set: a checkpoint); a timm tower without
    timm is the one-line error naming the extra."""
    v = cfg.vision
    if v.arch != "timm":
        return cfg
    timm = import_timm()  # even when resolved: every build path resolves, so a missing timm is said first
    if v.feature_dim:
        return cfg
    with torch.device("meta"):
        data = timm.data.resolve_data_config({}, model=_create(v))
    size = int(v.image_size or data["input_size"][-1])
    vision = dataclasses.replace(v, image_size=size, feature_dim=_pooled_dim(v, size))
    pre = cfg.preprocess
    if v.timm_preprocess:
        crop = data.get("crop_mode") or "center"
        if crop not in _CROP_MODES:
            log.warning("timm model %s: crop_mode %r is not supported; using a centre crop", v.model, crop)
        interp = data.get("interpolation")
        pre = dataclasses.replace(
            pre, mean=tuple(float(x) for x in data["mean"]), std=tuple(float(x) for x in data["std"]),
            interpolation=interp if interp in _INTERPOLATIONS else pre.interpolation,
            crop_pct=float(data.get("crop_pct") or 1.0), resize_mode=_CROP_MODES.get(crop, "shortest"),
            convention="open_clip")  # timm's eval pipeline is torchvision's on PIL images
    return dataclasses.replace(cfg, vision=vision, preprocess=pre)
