"""Few-shot classifier heads: what a few-shot method fits, saved and loaded like zero-shot heads.

Every head scores L2-normalised image features: `scores(feats) -> (N, C)` logits, `probs`, `topk(feats, k)`
(probabilities and class indices, best first), `classnames`, `meta`, `save(path)` -> `<path>.safetensors` +
`<path>.json` (atomic), and `load_head(path)` reads any of them back (zero-shot heads included).

  LinearHead        logits = scale * normalise(f P^T) W^T + b      (P optional: GIST's learned image map)
                    zero-shot and CoOp (text classifiers, b = 0), linear probe (W, b from the solver), GIST
  TipAdapterHead    logits = scale * f W^T + alpha * exp(-beta * (1 - f K^T)) V     (Tip-Adapter / -F)
                    W: zero-shot text classifier (C, D); K: cache keys (N, D); V: one-hot cache values (N, C)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from clipforge.atomic import atomic_write_path, atomic_write_text
from clipforge.errors import ClipforgeError, UsageError
from clipforge.zeroshot.head_model import warn_unrecorded
from clipforge.zeroshot.zeroshot_head import ZeroShotHead, head_output, head_paths

__all__ = ["LinearHead", "TipAdapterHead", "load_head", "tip_logits"]



class _Head:
    kind = ""
    classnames: list
    meta: dict

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def probs(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scores(feats).softmax(-1)

    def topk(self, feats: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, class indices), each (N, min(k, C)), best first."""
        return self.probs(feats).topk(min(k, len(self.classnames)), dim=-1)

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scores(feats).argmax(-1)

    def _tensors(self) -> dict:
        raise NotImplementedError

    def _info(self) -> dict:
        return {}

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write `<path>.safetensors` (tensors) and `<path>.json` (kind, class names, settings, meta); an
        earlier head there is replaced, anything else only with `overwrite`."""
        st, side, output = head_output(path, overwrite=overwrite)
        st.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in self._tensors().items() if v is not None}
        info = {"kind": self.kind, "classnames": list(self.classnames), "meta": self.meta, **self._info()}
        atomic_write_path(st, lambda tmp: save_file(tensors, tmp), output=output)
        atomic_write_text(side, json.dumps(info, indent=1, ensure_ascii=False), output=output)
        return st


class LinearHead(_Head):
    kind = "linear"

    def __init__(self, weights: torch.Tensor, classnames, scale: float = 100.0, bias: Optional[torch.Tensor] = None,
                 proj: Optional[torch.Tensor] = None, meta: Optional[dict] = None, extra: Optional[dict] = None):
        if weights.ndim != 2 or weights.shape[0] != len(classnames):
            raise UsageError(f"weights {tuple(weights.shape)} do not match {len(classnames)} class names")
        self.weights, self.bias, self.proj = weights.float(), None if bias is None else bias.float(), proj
        self.classnames, self.scale, self.meta = list(classnames), float(scale), dict(meta or {})
        self.extra = dict(extra or {})  # tensors kept with the head (e.g. CoOp's context vectors)

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        f = torch.as_tensor(feats).float()
        if self.proj is not None:
            f = f @ self.proj.float().T
        logits = self.scale * F.normalize(f, dim=-1) @ self.weights.T  # (N, C)
        return logits + self.bias if self.bias is not None else logits

    def _tensors(self) -> dict:
        return {"weights": self.weights, "bias": self.bias, "proj": self.proj,
                **{f"extra.{k}": v for k, v in self.extra.items()}}

    def _info(self) -> dict:
        return {"scale": self.scale}

    @classmethod
    def _from(cls, t: dict, info: dict) -> "LinearHead":
        extra = {k[len("extra."):]: v for k, v in t.items() if k.startswith("extra.")}
        return cls(t["weights"], info["classnames"], info["scale"], t.get("bias"), t.get("proj"), info.get("meta"),
                   extra)


def tip_logits(feats, zs_weights, keys, values, alpha: float, beta: float, scale: float) -> torch.Tensor:
    """Tip-Adapter's fused logits (N, C): zero-shot + alpha * cache affinity (see the module doc)."""
    affinity = feats @ keys.T  # (N, Nk) cosine similarities
    cache = torch.exp(-beta * (1.0 - affinity)) @ values  # (N, C)
    return scale * feats @ zs_weights.T + alpha * cache


class TipAdapterHead(_Head):
    kind = "tip-adapter"

    def __init__(self, zs_weights: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, classnames,
                 alpha: float, beta: float, scale: float = 100.0, meta: Optional[dict] = None):
        if zs_weights.shape[0] != len(classnames) or values.shape != (keys.shape[0], len(classnames)):
            raise UsageError(f"Tip-Adapter tensors do not fit {len(classnames)} classes: weights "
                             f"{tuple(zs_weights.shape)}, keys {tuple(keys.shape)}, values {tuple(values.shape)}")
        self.zs_weights, self.keys, self.values = zs_weights.float(), keys.float(), values.float()
        self.classnames, self.alpha, self.beta, self.scale = list(classnames), float(alpha), float(beta), float(scale)
        self.meta = dict(meta or {})

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        f = F.normalize(torch.as_tensor(feats).float(), dim=-1)
        return tip_logits(f, self.zs_weights, self.keys, self.values, self.alpha, self.beta, self.scale)

    def _tensors(self) -> dict:
        return {"zs_weights": self.zs_weights, "keys": self.keys, "values": self.values}

    def _info(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "scale": self.scale}

    @classmethod
    def _from(cls, t: dict, info: dict) -> "TipAdapterHead":
        return cls(t["zs_weights"], t["keys"], t["values"], info["classnames"], info["alpha"], info["beta"],
                   info["scale"], info.get("meta"))


_KINDS = {c.kind: c for c in (LinearHead, TipAdapterHead)}


def load_head(path):
    """Any saved head: a few-shot head (`kind` in its JSON) or a zero-shot head (`zeroshot.classify(save_head=...)`)."""
    st, side = head_paths(path)
    if not st.is_file() or not side.is_file():
        raise ClipforgeError(f"head not found: need {st} and {side}")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ClipforgeError(f"{side} is not valid JSON: {e}") from None
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind is None:
        return ZeroShotHead.load(path)
    if kind not in _KINDS:
        raise ClipforgeError(f"{side}: unknown head kind {kind!r} (known: {', '.join(_KINDS)})")
    warn_unrecorded(info.get("meta"), f"head {st.with_suffix('')}")
    return _KINDS[kind]._from(load_file(str(st)), info)
