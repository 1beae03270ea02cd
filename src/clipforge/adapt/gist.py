"""GIST-style few-shot learning (Lewis et al. 2023, "GIST: Generating Image-Specific Text for Fine-grained Object
Classification"): fine-grained text descriptions of each class, matched to each support image, teach the
image-text space; then a linear probe classifies.

  1. descriptions: a JSON file {class: [descriptions]} (CuPL's format; GIST generates them with an LLM — none
     runs here, so they are given; `clipforge data demo fonts` writes a hand-written set for the digits);
     each is read as "class: description" unless it already names the class;
  2. matching: each support image is paired with the `n_match` descriptions of ITS OWN class most similar to it
     (cosine, frozen model);
  3. contrastive fine-tuning on those (image, description) pairs — here of each tower's output projection only:
     a learned linear map of the normalised image (and text) embedding, initialised to the identity. That is
     exact for the projections (normalise(M P h) = normalise(M normalise(P h))), so this is GIST with the towers
     frozen up to their projections, a few thousand parameters and no pixels needed. A penalty
     `reg * ||M - I||^2` keeps the maps near the pretrained space (few shots);
  4. classification: the CLIP-protocol linear probe on the mapped image features (GIST's evaluation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipforge.adapt.fewshot_method import FEWSHOT, FewShotMethod
from clipforge.adapt.linear_probe_method import probe_head
from clipforge.errors import UsageError
from clipforge.registry import Option
from clipforge.zeroshot.cupl import load_descriptions

__all__ = ["Gist", "match_descriptions", "description_texts"]


def description_texts(classnames, descriptions: dict) -> tuple[list[str], torch.Tensor]:
    """All descriptions as "class: description" texts, and the class index of each. A class without any is an
    error (GIST needs something to match)."""
    texts, owner, missing = [], [], []
    for c, name in enumerate(classnames):
        items = descriptions.get(name) or []
        if not items:
            missing.append(name)
        for d in items:
            d = str(d).strip()
            texts.append(d if name.lower() in d.lower() else f"{name}: {d}")
            owner.append(c)
    if missing:
        raise UsageError(f"`descriptions` has none for {len(missing)} class(es), e.g. {missing[0]!r}")
    return texts, torch.tensor(owner)


def match_descriptions(feats, labels, desc_feats, owner, n_match: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, description index) pairs: each image with its own class's `n_match` most similar texts."""
    sims = feats @ desc_feats.T  # (N, T)
    sims = sims.masked_fill(owner[None, :] != labels[:, None], -math.inf)  # own class only
    k = min(n_match, int(torch.bincount(owner).min()))
    top = sims.topk(k, dim=1).indices  # (N, k)
    return torch.arange(len(feats)).repeat_interleave(k), top.reshape(-1)


@FEWSHOT.register("gist")
class Gist(FewShotMethod):
    """GIST: images matched to their class's descriptions, contrastive tuning of the projections, then a probe."""

    options = (
        Option("descriptions", str, required=True, help="gist: class descriptions, a JSON file {class: [sentences]}"),
        Option("n_match", int, 3, help="gist: descriptions matched to each support image (default 3)"),
        Option("epochs", int, 100, help="gist: contrastive epochs over the matched pairs (default 100)"),
        Option("lr", float, 1e-3, help="gist: AdamW learning rate (default 1e-3)"),
        Option("reg", float, 1.0, help="gist: weight of ||M - I||^2 keeping the maps near the pretrained space"),
    )

    def fit(self, encoder, support, *, seed=0, progress=None):
        desc = self.descriptions if isinstance(self.descriptions, dict) else load_descriptions(self.descriptions)
        texts, owner = description_texts(support.classnames, desc)
        t = F.normalize(encoder.encode_texts(texts).float(), dim=-1)  # (T, D)
        img_idx, txt_idx = match_descriptions(support.feats, support.labels, t, owner, self.n_match)
        d = support.feats.shape[1]
        m_img = torch.nn.Parameter(torch.eye(d))
        m_txt = torch.nn.Parameter(torch.eye(d))
        opt = torch.optim.AdamW([m_img, m_txt], lr=self.lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(seed)
        n, bs = len(img_idx), 64
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.epochs * math.ceil(n / bs)))
        eye = torch.eye(d)
        with torch.enable_grad():
            for _ in range(self.epochs):
                for b in torch.randperm(n, generator=g).split(bs):
                    fi = F.normalize(support.feats[img_idx[b]] @ m_img.T, dim=-1)
                    ft = F.normalize(t[txt_idx[b]] @ m_txt.T, dim=-1)
                    logits = 100.0 * fi @ ft.T  # (B, B)
                    # the same image or the same description can appear twice in a batch: both are positives
                    pos = ((img_idx[b][:, None] == img_idx[b][None]) | (txt_idx[b][:, None] == txt_idx[b][None]))
                    target = pos.float() / pos.float().sum(1, keepdim=True)
                    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T / target.T.sum(
                        1, keepdim=True))) / 2
                    loss = loss + self.reg * (((m_img - eye) ** 2).sum() + ((m_txt - eye) ** 2).sum())
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
        proj = m_img.detach()
        mapped = F.normalize(support.feats @ proj.T, dim=-1)
        val = F.normalize(support.val_feats @ proj.T, dim=-1) if len(support.val_labels) else support.val_feats
        meta = {"method": self.name, "n_match": self.n_match, "epochs": self.epochs, "reg": self.reg,
                "n_pairs": int(n), "n_descriptions": len(texts)}
        return probe_head(mapped, support.labels, val, support.val_labels, support.classnames, proj=proj, meta=meta)
