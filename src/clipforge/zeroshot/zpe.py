"""ZPE: zero-shot prompt-ensemble weighting (Allingham et al., "A Simple Zero-shot Prompt Weighting Technique
to Improve Prompt Ensembling in Text-Image Models", ICML 2023).

Per-prompt logits l[n, p, c]. Debias each (prompt, class) by half the sum of its mean over a pool of
unlabelled reference ("pretraining-like") images and its mean over the test images:
    l~[n, p, c] = l[n, p, c] - 1/2 (mean_ref l[., p, c] + mean_test l[., p, c])
Score each prompt by its average debiased confidence on the test images, s_p = mean_n max_c l~[n, p, c];
weights w = softmax_p(s); final logits = sum_p w_p l[n, p, c]. Optional selection first: keep only prompts
with (s_p - median(s)) / MAD(s) > threshold (0.5 general, 2.0 fine-grained), MAD = median |s - median(s)|.
The selection variant follows our implementation notes; its exact form in the paper is unconfirmed, so it is
off by default. When MAD is 0 every prompt is kept; when no prompt passes, the best one is kept.

Because logits are linear in the image features, the means over images are means of features, and the
weighted head is itself linear: class vector c = sum_p w_p e[p, c] (not renormalised, so the logits equal
the weighted sum exactly). `zpe_weights_from_features` never builds the (N, P, C) logit tensor.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.data.sources.filelist import open_inputs
from clipforge.errors import UsageError
from clipforge.registry import Option
from clipforge.zeroshot.zeroshot_head import EncodeText, ZeroShotHead, encode_prompt_matrix, model_text_encoder
from clipforge.zeroshot.methods import METHODS, TEMPLATES, ZeroShotMethod
from clipforge.zeroshot.templates import get_templates, templates_hash

__all__ = ["zpe_scores", "mad_select", "weights_from_scores", "zpe_weights", "zpe_weights_from_features",
           "build_zpe_classifier", "ZpeMethod"]


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()


def zpe_scores(per_prompt_logits_test, per_prompt_logits_ref=None) -> torch.Tensor:
    """s_p from logits `(N, P, C)` (test) and `(R, P, C)` (reference pool; None: test mean only).  # (P,)"""
    lt = _t(per_prompt_logits_test)
    if lt.ndim != 3:
        raise UsageError(f"per-prompt logits must be (N, P, C), got {tuple(lt.shape)}")
    bias = lt.mean(0)  # (P, C)
    if per_prompt_logits_ref is not None:
        lr = _t(per_prompt_logits_ref)
        if lr.shape[1:] != lt.shape[1:]:
            raise UsageError(f"reference logits {tuple(lr.shape)} do not match test logits {tuple(lt.shape)}")
        bias = 0.5 * (bias + lr.mean(0))
    return (lt - bias).amax(-1).mean(0)


def mad_select(scores, threshold: float) -> torch.Tensor:
    """Boolean mask of prompts whose robust z-score (s - median) / MAD exceeds `threshold`.  # (P,)"""
    s = _t(scores)
    # numpy's median (mean of the two middle values); torch.median returns the lower one
    med = torch.tensor(float(np.median(s.numpy())), dtype=s.dtype)
    mad = float(np.median((s - med).abs().numpy()))
    if mad == 0.0:
        return torch.ones_like(s, dtype=torch.bool)
    keep = (s - med) / mad > threshold
    if not keep.any():
        keep[s.argmax()] = True
    return keep


def weights_from_scores(scores, mad_threshold: float | None = None) -> torch.Tensor:
    """softmax over the (selected) prompt scores; unselected prompts get weight 0.  # (P,)"""
    s = _t(scores)
    if mad_threshold is not None:
        s = s.masked_fill(~mad_select(s, mad_threshold), float("-inf"))
    return s.softmax(0)


def zpe_weights(per_prompt_logits_test, per_prompt_logits_ref=None, mad_threshold: float | None = None):
    """Prompt weights (P,) float64 tensor, from per-prompt logits (N, P, C) and (R, P, C)."""
    return weights_from_scores(zpe_scores(per_prompt_logits_test, per_prompt_logits_ref), mad_threshold)


def zpe_weights_from_features(
    test_feats, ref_feats, prompt_emb: torch.Tensor, logit_scale: float = 100.0,
    mad_threshold: float | None = None, max_block_elems: int = 1 << 24,
) -> torch.Tensor:
    """Same weights as `zpe_weights`, from normalised image features and prompt embeddings (P, C, D).

    l[n, p, c] = logit_scale * f_n . e[p, c]; the (N, P, C) tensor is built a block of images at a time.
    """
    e = _t(prompt_emb)  # (P, C, D)
    ft = F.normalize(_t(test_feats), dim=-1)  # (N, D)
    mean_f = ft.mean(0)
    if ref_feats is not None:
        mean_f = 0.5 * (mean_f + F.normalize(_t(ref_feats), dim=-1).mean(0))
    bias = logit_scale * torch.einsum("d,pcd->pc", mean_f, e)  # (P, C)
    p, c, _ = e.shape
    b = max(1, max_block_elems // (p * c))
    total = torch.zeros(p, dtype=torch.float64)
    for i in range(0, len(ft), b):
        l = logit_scale * torch.einsum("nd,pcd->npc", ft[i : i + b], e)  # (b, P, C)
        total += (l - bias).amax(-1).sum(0)
    return weights_from_scores(total / len(ft), mad_threshold)


def build_zpe_classifier(
    encode_text: EncodeText,
    classnames: Sequence[str],
    test_feats,
    ref_feats=None,
    templates=None,
    mad_threshold: float | None = None,
    logit_scale: float = 100.0,
    batch_size: int = 1024,
    progress=None,
) -> ZeroShotHead:
    """A ZPE-weighted head for these test images (transductive: the weights depend on `test_feats`).

    `ref_feats`: features of unlabelled reference images (e.g. a sample of the pretraining-like data); None
    debiases with the test images only. The prompt weights are kept in `head.meta["prompt_weights"]`.
    """
    tmpl = get_templates(templates)
    e = encode_prompt_matrix(encode_text, list(classnames), tmpl, batch_size, progress)  # (P, C, D)
    w = zpe_weights_from_features(test_feats, ref_feats, e, logit_scale, mad_threshold)
    weights = torch.einsum("p,pcd->cd", w.float(), e)  # (C, D); not renormalised, see module doc
    meta = {"method": "zpe", "n_templates": len(tmpl), "templates_hash": templates_hash(tmpl),
            "mad_threshold": mad_threshold, "prompt_weights": [float(x) for x in w]}
    return ZeroShotHead(weights, list(classnames), logit_scale, meta)


@METHODS.register("zpe")
class ZpeMethod(ZeroShotMethod):
    """ZPE: template prompts weighted by their debiased confidence on the images being classified."""

    options = (TEMPLATES,
               Option("reference", str, help="zpe: an unlabelled source of 'pretraining-like' images for debiasing"),
               Option("mad_threshold", float, help="zpe: keep prompts whose robust z-score exceeds this (0.5 "
                      "general, 2.0 fine-grained)"))
    transductive = True
    linear = True

    def build(self, encoder, classnames, *, test_features=None, batch_size=256, workers=0, progress=None):
        if test_features is None or len(test_features) == 0:
            raise UsageError("zpe weights its prompts on the images being classified; none were given")
        ref = None
        if self.reference is not None:
            ref = encoder.encode_source(open_inputs(self.reference), batch_size, workers=workers, progress=progress,
                                        desc="reference").feats
            if len(ref) == 0:
                raise UsageError("`reference` has no readable images")
        return build_zpe_classifier(model_text_encoder(encoder, batch_size), classnames, test_features, ref,
                                    self.templates, self.mad_threshold, progress=progress)
