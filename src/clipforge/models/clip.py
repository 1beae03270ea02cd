"""CLIPModel: two towers, a learnable temperature (and optional bias), one typed output."""
from __future__ import annotations

from typing import Optional, Set

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import UsageError
from clipforge.models.batchnorm import keep_frozen_norms_eval
from clipforge.models.checkpoint import load_state_dict_strict, save_pretrained
from clipforge.models.config import CLIPConfig
from clipforge.models.output import CLIPOutput
from clipforge.models.pretrained_config import resolve_config
from clipforge.models.pretrained_sources import (hf_text_dir, read_efficientnet_state, read_timm_state,
                                                 resolve_efficientnet_pretrained, timm_weights_path)
from clipforge.models.projection import tower_head
from clipforge.models.towers import text_tower, vision_tower
from clipforge.models.transforms import image_transform


def _vision_tower(config: CLIPConfig, pretrained: bool) -> nn.Module:
    v = config.vision
    tower = vision_tower(v, config.embed_dim)
    path = None
    if pretrained and v.arch == "efficientnet":
        path = resolve_efficientnet_pretrained(v.variant, v.pretrained)
    if path is not None:
        state = {k: t for k, t in read_efficientnet_state(path).items() if not k.startswith("_fc.")}
        load_state_dict_strict(tower.backbone, state, str(path))  # (the ImageNet classifier is dropped)
    if pretrained and v.arch == "timm" and v.pretrained is not None:
        path = timm_weights_path(v.pretrained)  # a local file only; its classifier is dropped
        load_state_dict_strict(tower.model, read_timm_state(path, tower.model), str(path))
    return tower


def _text_tower(config: CLIPConfig, pretrained: bool) -> nn.Module:
    t = config.text
    return text_tower(t, config.embed_dim, pretrained_dir=hf_text_dir(t.hf) if pretrained and t.hf else None)


class CLIPModel(nn.Module):
    """A contrastive image-text model. Carries its tokenizer and preprocessing (set by create/load).

    encode_image(pixels (B,3,H,W)) -> (B, D); encode_text(ids (B,T)) -> (B, D); forward -> CLIPOutput.
    """

    def __init__(self, config: CLIPConfig, tokenizer=None, pretrained: bool = False):
        """`pretrained`: load the pretrained towers' weights (EfficientNet / timm `vision.pretrained`, `text.hf`)
        from where the config names them; False builds them randomly initialised (a checkpoint's state follows)."""
        super().__init__()
        config = resolve_config(config)  # a Hugging Face text tower's config read into `text.hf_config`
        self.config = config
        self.visual = _vision_tower(config, pretrained)
        self.text = _text_tower(config, pretrained)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))  # log-space t, s = exp(t)
        self.logit_bias = (nn.Parameter(torch.tensor(float(config.logit_bias_init)))
                           if config.logit_bias_init is not None else None)
        self._init_weights()
        self.tokenizer = tokenizer
        self.preprocess = image_transform(config, train=False)
        self.preprocess_train = image_transform(config, train=True)

    def _init_weights(self) -> None:
        # OpenAI-style scaled init: attention/MLP output projections shrink with depth.
        for tower in (self.visual, self.text):
            if not hasattr(tower, "transformer"):
                continue  # the ResNet tower initialises itself
            W = tower.transformer.blocks[0].attn.qkv.in_features if len(tower.transformer.blocks) else 1
            L = max(len(tower.transformer.blocks), 1)
            proj_std, attn_std, fc_std = (W ** -0.5) * ((2 * L) ** -0.5), W ** -0.5, (2 * W) ** -0.5
            for blk in tower.transformer.blocks:
                nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
                nn.init.normal_(blk.attn.out.weight, std=proj_std)
                nn.init.normal_(blk.mlp.fc.weight, std=fc_std)
                nn.init.normal_(blk.mlp.proj.weight, std=proj_std)
            if isinstance(tower.proj, nn.Linear):
                nn.init.normal_(tower.proj.weight, std=W ** -0.5)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.dtype

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.visual(pixels.to(self.dtype)).pooled  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, token_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text(token_ids).pooled  # (B, D)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, pixels: Optional[torch.Tensor] = None, token_ids: Optional[torch.Tensor] = None, *,
                normalize: bool = True, return_tokens: bool = False,
                image_features: Optional[torch.Tensor] = None,
                text_features: Optional[torch.Tensor] = None) -> CLIPOutput:
        """`image_features` / `text_features`: frozen towers' cached features (train/feature_cache.py) in place
        of pixels / token ids: only the projection heads run."""
        img = txt = img_tok = txt_tok = mask = None

        def norm(x):
            return F.normalize(x, dim=-1) if normalize and x is not None else x

        if image_features is not None or text_features is not None:
            if return_tokens or pixels is not None or token_ids is not None:
                raise UsageError("cached features replace pixels and token ids, and carry no tokens")
            if image_features is not None:
                img = norm(tower_head(self.visual)(image_features.to(self.dtype)))
            if text_features is not None:
                txt = norm(tower_head(self.text)(text_features.to(self.dtype)))
            return CLIPOutput(image_embeds=img, text_embeds=txt, logit_scale=self.logit_scale.exp(),
                              logit_bias=self.logit_bias)

        if pixels is not None:
            v = self.visual(pixels.to(self.dtype), return_tokens=return_tokens)
            img, img_tok = norm(v.pooled), norm(v.tokens)
        if token_ids is not None:
            t = self.text(token_ids, return_tokens=return_tokens)
            txt, txt_tok, mask = norm(t.pooled), norm(t.tokens), t.mask
        return CLIPOutput(
            image_embeds=img, text_embeds=txt, logit_scale=self.logit_scale.exp(),
            logit_bias=self.logit_bias, image_tokens=img_tok, text_tokens=txt_tok, text_mask=mask,
        )

    def train(self, mode: bool = True):
        """Train mode, except for frozen BatchNorm layers (a locked tower, the base under an adapter): they stay
        in eval mode, so their running statistics never drift from the weights that are saved."""
        return keep_frozen_norms_eval(super().train(mode))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for tower in (self.visual, self.text):
            if hasattr(tower, "set_grad_checkpointing"):  # pretrained towers decide for themselves
                tower.set_grad_checkpointing(enable)
            elif hasattr(tower, "transformer"):  # the ResNet tower has no checkpointed blocks
                tower.transformer.grad_checkpointing = enable

    def no_weight_decay(self) -> Set[str]:
        """Names of parameters that take no weight decay: gains, biases, embeddings, temperature, bias."""
        names = set()
        for n, p in self.named_parameters():
            if p.ndim < 2 or "embedding" in n or n.startswith("logit_") or n.endswith("probe"):
                names.add(n)
        return names

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tokenize(self, texts) -> torch.Tensor:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer attached")
        return self.tokenizer(texts)

    def save_pretrained(self, path, extra=None, *, overwrite: bool = False):
        """Write this model as a checkpoint directory (`checkpoint.save_pretrained`; a path holding anything
        but an earlier checkpoint is refused unless `overwrite`)."""
        if any(n.endswith(".lora_A") for n, _ in self.named_parameters()):
            raise UsageError("this model carries a LoRA adapter: save the adapter alone with "
                             "clipforge.models.save_adapter, or fold it in first (clipforge.models.adapter.merged_model)")
        return save_pretrained(self, path, extra=extra, overwrite=overwrite)

