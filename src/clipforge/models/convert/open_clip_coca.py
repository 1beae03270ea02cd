"""open_clip CoCa (`coca_ViT-B-32` and friends, open_clip's `CoCa` class) <-> native `CoCaModel`.

An open_clip model config with a `multimodal_cfg` is a CoCa: its vision_cfg has `attentional_pool: true`
(the original open_clip head: a pooler of `attn_pooler_queries` queries, ln_post after it), its text_cfg
`embed_cls: true` (the appended class token, pooled last), and the multimodal_cfg sizes the decoder. The
settings clipforge cannot reproduce (layer scale, patch dropout, the 'parallel' / 'cascade' poolers, custom
blocks, HF text towers) are refused by name.

open_clip layout -> native: `visual.conv1` -> `visual.conv`, `visual.transformer.resblocks.i` ->
`visual.transformer.blocks.i`, `visual.attn_pool.*` as it is (both are nn.MultiheadAttention), `visual.proj`
(D, D) -> `visual.proj.weight` transposed; `text.transformer.resblocks.i` -> `text.blocks.i`,
`text.text_projection` -> `text.proj.weight`ᵀ; `text_decoder.resblocks.i` / `text_decoder.cross_attn.i` ->
`decoder.blocks.i` / `decoder.cross.i`, `text_decoder.text_projection` (W, vocab) -> `decoder.proj.weight`ᵀ.
"""
from __future__ import annotations

from typing import Optional

from clipforge.errors import ClipforgeError
from clipforge.models.coca_config import CoCaConfig, DecoderConfig
from clipforge.models.config import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, TextConfig, ViTConfig
from clipforge.models.convert.common import KeyReader, StateDict, assemble
from clipforge.models.convert.openai import checkpoint_tokenizer

__all__ = ["is_open_clip_coca", "coca_config_from_open_clip", "coca_state_from_open_clip",
           "coca_state_to_open_clip", "load_open_clip_coca"]

_V_OK = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio", "attentional_pool",
         "attn_pooler_heads", "attn_pooler_queries", "output_tokens", "no_ln_pre", "norm_kwargs"}
_T_OK = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "embed_cls", "output_tokens",
         "pad_id", "correct_cls_mask", "norm_kwargs", "proj_bias", "pool_type"}
_M_OK = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "attn_pooler_heads", "n_queries",
         "dim_head", "norm_kwargs"}
_TOP_OK = {"embed_dim", "vision_cfg", "text_cfg", "multimodal_cfg", "quick_gelu", "custom_text", "init_logit_scale",
           "cast_dtype", "preprocess_cfg"}
IGNORED = ("text.attn_mask", "text_decoder.attn_mask", "attn_mask")


def is_open_clip_coca(model_cfg: dict) -> bool:
    return isinstance(model_cfg, dict) and "multimodal_cfg" in model_cfg


def _refuse(d: dict, ok: set, where: str, must: Optional[dict] = None) -> None:
    unknown = sorted(set(d) - ok)
    bad = {k: d.get(k) for k, v in (must or {}).items() if d.get(k, v) != v}
    if unknown or bad:
        raise ClipforgeError(f"open_clip CoCa {where}: settings clipforge's CoCa cannot reproduce: "
                             f"{unknown or ''}{bad or ''}")


def _eps(d: dict) -> float:
    return float((d.get("norm_kwargs") or {}).get("eps", 1e-5))


def coca_config_from_open_clip(model_cfg: dict, preprocess: Optional[dict] = None, *,
                               quick_gelu: Optional[bool] = None, name: str = "") -> CoCaConfig:
    """A native `CoCaConfig` from an open_clip CoCa model config (+ its preprocess config)."""
    vc, tc, mc = (dict(model_cfg.get(k) or {}) for k in ("vision_cfg", "text_cfg", "multimodal_cfg"))
    _refuse(model_cfg, _TOP_OK, "config")
    _refuse(vc, _V_OK, "vision_cfg", {"attentional_pool": True})
    _refuse(tc, _T_OK, "text_cfg", {"embed_cls": True, "proj_bias": False})
    _refuse(mc, _M_OK, "multimodal_cfg")
    if int(mc.get("vocab_size", 49408)) != int(tc.get("vocab_size", 49408)):
        raise ClipforgeError("open_clip CoCa: multimodal_cfg.vocab_size differs from text_cfg.vocab_size")
    qg = model_cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu
    act = "quick_gelu" if qg else "gelu"
    width = int(vc.get("width", 768))
    pre = dict(preprocess or model_cfg.get("preprocess_cfg") or {})
    image_size = vc.get("image_size", 224)
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    return CoCaConfig(
        embed_dim=int(model_cfg["embed_dim"]),
        vision=ViTConfig(image_size=image_size, patch_size=int(vc.get("patch_size", 16)), width=width,
                         layers=int(vc.get("layers", 12)), heads=width // int(vc.get("head_width", 64)),
                         mlp_ratio=float(vc.get("mlp_ratio", 4.0)), act=act, pool="cls",
                         ln_pre=not vc.get("no_ln_pre", False), ln_eps=_eps(vc)),
        text=TextConfig(vocab_size=int(tc.get("vocab_size", 49408)), context_length=int(tc.get("context_length", 77)),
                        width=int(tc.get("width", 512)), layers=int(tc.get("layers", 12)),
                        heads=int(tc.get("heads", 8)), mlp_ratio=float(tc.get("mlp_ratio", 4.0)), act=act,
                        pool="last", pad_token_id=int(tc.get("pad_id", 0)), ln_eps=_eps(tc)),
        decoder=DecoderConfig(width=int(mc.get("width", 512)), layers=int(mc.get("layers", 12)),
                              heads=int(mc.get("heads", 8)), mlp_ratio=float(mc.get("mlp_ratio", 4)), act=act,
                              ln_eps=_eps(mc)),
        pooler_queries=int(vc.get("attn_pooler_queries", 256)), pooler_heads=int(vc.get("attn_pooler_heads", 8)),
        cls_mask="correct" if tc.get("correct_cls_mask", False) else "legacy",
        preprocess=PreprocessConfig(mean=tuple(pre.get("mean", OPENAI_MEAN)), std=tuple(pre.get("std", OPENAI_STD)),
                                    interpolation=pre.get("interpolation", "bicubic"),
                                    resize_mode=pre.get("resize_mode", "shortest")),
        logit_scale_init=float(model_cfg.get("init_logit_scale", CoCaConfig.logit_scale_init)),
        name=name,
    )


_BLOCK = (("attn.in_proj_weight", "attn.qkv.weight"), ("attn.in_proj_bias", "attn.qkv.bias"),
          ("attn.out_proj.weight", "attn.out.weight"), ("attn.out_proj.bias", "attn.out.bias"),
          ("ln_1.weight", "ln_1.weight"), ("ln_1.bias", "ln_1.bias"), ("ln_2.weight", "ln_2.weight"),
          ("ln_2.bias", "ln_2.bias"), ("mlp.c_fc.weight", "mlp.fc.weight"), ("mlp.c_fc.bias", "mlp.fc.bias"),
          ("mlp.c_proj.weight", "mlp.proj.weight"), ("mlp.c_proj.bias", "mlp.proj.bias"))
_CROSS = _BLOCK + (("ln_1_kv.weight", "ln_1_kv.weight"), ("ln_1_kv.bias", "ln_1_kv.bias"))
_POOLER = ("query", "attn.in_proj_weight", "attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight",
           "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_q.weight", "ln_q.bias",
           "ln_k.weight", "ln_k.bias")


def _pairs(cfg: CoCaConfig):
    """(open_clip key, native key, transposed) for every tensor of `cfg`'s model."""
    out = [("visual.conv1.weight", "visual.conv.weight", False),
           ("visual.class_embedding", "visual.class_embedding", False),
           ("visual.positional_embedding", "visual.positional_embedding", False),
           ("visual.proj", "visual.proj.weight", True),
           ("text.token_embedding.weight", "text.token_embedding.weight", False),
           ("text.positional_embedding", "text.positional_embedding", False),
           ("text.cls_emb", "text.cls_emb", False),
           ("text.text_projection", "text.proj.weight", True),
           ("text_decoder.text_projection", "decoder.proj.weight", True),
           ("logit_scale", "logit_scale", False)]
    norms = [("visual.ln_post", "visual.ln_post"), ("text.ln_final", "text.ln_final"),
             ("text_decoder.ln_final", "decoder.ln_final")] + ([("visual.ln_pre", "visual.ln_pre")]
                                                                if cfg.vision.ln_pre else [])
    out += [(f"{s}.{k}", f"{d}.{k}", False) for s, d in norms for k in ("weight", "bias")]
    out += [(f"visual.attn_pool.{k}", f"visual.attn_pool.{k}", False) for k in _POOLER]
    for src, dst, n, keys in (("visual.transformer.resblocks", "visual.transformer.blocks", cfg.vision.layers, _BLOCK),
                              ("text.transformer.resblocks", "text.blocks", cfg.text.layers, _BLOCK),
                              ("text_decoder.resblocks", "decoder.blocks", cfg.decoder.layers, _BLOCK),
                              ("text_decoder.cross_attn", "decoder.cross", cfg.decoder.layers, _CROSS)):
        out += [(f"{src}.{i}.{s}", f"{dst}.{i}.{d}", False) for i in range(n) for s, d in keys]
    return out


def coca_state_from_open_clip(state: StateDict, cfg: CoCaConfig, source: str = "open_clip CoCa weights") -> StateDict:
    """open_clip CoCa state dict -> native (a missing or leftover key is an error; the pooler's projection
    weights are fused or separate as open_clip holds them, and so does the native pooler)."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    r = KeyReader(state, source, ignore=IGNORED)
    out: StateDict = {}
    for s, d, t in _pairs(cfg):
        if "attn_pool.attn" in s and "proj_weight" in s and not s.endswith("out_proj.weight"):
            v = r.pop_opt(s)  # in_proj_weight when the pooler's key width equals D, else q/k/v_proj_weight
            if v is None:
                continue
        else:
            v = r.pop(s)
        out[d] = v.t() if t else v
    out["logit_scale"] = out["logit_scale"].reshape(())
    r.finish()
    return out


def coca_state_to_open_clip(sd: StateDict, cfg: CoCaConfig) -> StateDict:
    """Native CoCa state dict -> open_clip's layout (the inverse of `coca_state_from_open_clip`)."""
    out = {s: (sd[d].t() if t else sd[d]) for s, d, t in _pairs(cfg) if d in sd}
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def load_open_clip_coca(state: StateDict, model_cfg: dict, *, preprocess: Optional[dict] = None,
                        quick_gelu: Optional[bool] = None, name: str = "", tokenizer=None, directory=None,
                        source: str = "open_clip CoCa weights"):
    """A native `CoCaModel` from open_clip CoCa weights and their model config. The tokenizer as for every
    open_clip checkpoint (`openai.checkpoint_tokenizer`: the caller's, the directory's, an installed open_clip's)."""
    cfg = coca_config_from_open_clip(model_cfg, preprocess, quick_gelu=quick_gelu, name=name)
    native = coca_state_from_open_clip(state, cfg, source)
    tok = checkpoint_tokenizer(cfg, directory=directory, source=source, tokenizer=tokenizer)
    return assemble(cfg, native, tok, f"converted {source}")
