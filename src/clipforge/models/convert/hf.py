"""Hugging Face `CLIPModel` / `SiglipModel` <-> native: config mapping and state-dict mapping, both ways.

HF keeps q/k/v as separate Linear layers; native attention is one fused qkv Linear (q, k, v stacked, the
OpenAI in_proj layout). HF CLIP text pooling: `eos_token_id == 2` in the config is HF's legacy marker for
"argmax of the ids" (OpenAI's rule), any other value means "first position of eos_token_id" — so native
`pool="argmax"` exports as eos_token_id 2 and imports back, and `pool="eos"` carries the real id.
SigLIP: no class token, no ln_pre, patch conv with bias, attention-pool (MAP) vision head, no vision
projection, text pooled at the last position through a biased projection, and a learned logit bias.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save_file

from clipforge.errors import ClipforgeError, UsageError
from clipforge.json_file import read_json_object
from clipforge.models.config import CLIPConfig, PreprocessConfig, TextConfig, ViTConfig
from clipforge.models.unwrap import unwrap_model
from clipforge.models.convert.common import HF_ACTS, KeyReader, StateDict, assemble, fuse_qkv, mlp_hidden, mlp_ratio, native_act, split_qkv, write_dir_atomically
from clipforge.models.checkpoint import load_safetensors, read_state_dict
from clipforge.models.convert.hf_files import load_hf_preprocess, load_hf_tokenizer, save_hf_preprocess, save_hf_tokenizer

HF_TYPES = ("clip", "siglip")
_LEGACY_ARGMAX_EOS = 2


def _size(v) -> int:
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise ClipforgeError(f"non-square size {v} is not supported")
        return int(v[0])
    return int(v)


# ------------------------------------------------------------------------------------------------ configs
def config_from_hf(hf: dict, preprocess: PreprocessConfig = None) -> CLIPConfig:
    """A native CLIPConfig from an HF `config.json` dict (model_type clip or siglip)."""
    mt = hf.get("model_type")
    if mt not in HF_TYPES:
        raise ClipforgeError(f"HF model_type {mt!r} is not supported; supported: {', '.join(HF_TYPES)}")
    tc, vc = dict(hf.get("text_config") or {}), dict(hf.get("vision_config") or {})
    siglip = mt == "siglip"
    d_tc = {"vocab_size": 32000 if siglip else 49408, "hidden_size": 768 if siglip else 512,
            "intermediate_size": 3072 if siglip else 2048, "num_hidden_layers": 12,
            "num_attention_heads": 12 if siglip else 8, "max_position_embeddings": 64 if siglip else 77,
            "hidden_act": "gelu_pytorch_tanh" if siglip else "quick_gelu", "layer_norm_eps": 1e-6 if siglip else 1e-5,
            "pad_token_id": 1, "eos_token_id": 49407}
    d_vc = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "image_size": 224, "patch_size": 16 if siglip else 32, "num_channels": 3,
            "hidden_act": "gelu_pytorch_tanh" if siglip else "quick_gelu", "layer_norm_eps": 1e-6 if siglip else 1e-5}
    tc, vc = {**d_tc, **{k: v for k, v in tc.items() if v is not None}}, {**d_vc, **{k: v for k, v in vc.items()
                                                                                   if v is not None}}
    if int(vc["num_channels"]) != 3:
        raise ClipforgeError(f"vision num_channels={vc['num_channels']}: only RGB (3) models are supported")
    vw, tw = int(vc["hidden_size"]), int(tc["hidden_size"])
    vision = dict(
        image_size=_size(vc["image_size"]), patch_size=_size(vc["patch_size"]), width=vw,
        layers=int(vc["num_hidden_layers"]), heads=int(vc["num_attention_heads"]),
        mlp_ratio=mlp_ratio(int(vc["intermediate_size"]), vw, "vision_config"),
        act=native_act(vc["hidden_act"], "vision_config"), ln_eps=float(vc["layer_norm_eps"]),
    )
    text = dict(
        vocab_size=int(tc["vocab_size"]), context_length=int(tc["max_position_embeddings"]), width=tw,
        layers=int(tc["num_hidden_layers"]), heads=int(tc["num_attention_heads"]),
        mlp_ratio=mlp_ratio(int(tc["intermediate_size"]), tw, "text_config"),
        act=native_act(tc["hidden_act"], "text_config"), ln_eps=float(tc["layer_norm_eps"]),
        pad_token_id=int(tc["pad_token_id"]) if tc.get("pad_token_id") is not None else 0,
    )
    if siglip:
        if not vc.get("vision_use_head", True):
            raise ClipforgeError("SigLIP vision_use_head=False has no pooled output; not supported")
        embed_dim = vw
        proj_size = tc.get("projection_size") or tw
        if int(proj_size) != embed_dim:
            raise ClipforgeError(f"SigLIP text projection_size {proj_size} != vision hidden_size {vw}")
        vision.update(pool="map", ln_pre=False, patch_bias=True, proj=False)
        text.update(causal=False, pool="last", proj=True, proj_bias=True)
        cfg = CLIPConfig(embed_dim=embed_dim, vision=ViTConfig(**vision), text=TextConfig(**text),
                         preprocess=preprocess or PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3,
                                                                   resize_mode="squash", convention="hf"),
                         logit_scale_init=0.0, logit_bias_init=0.0)
    else:
        eos = tc.get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
        if eos == _LEGACY_ARGMAX_EOS:
            text.update(pool="argmax")
        else:
            text.update(pool="eos", eos_token_id=int(eos))
        embed_dim = int(hf.get("projection_dim") or 512)
        vision.update(pool="cls", ln_pre=True, patch_bias=False, proj=True)
        text.update(causal=True, proj=True, proj_bias=False)
        cfg = CLIPConfig(embed_dim=embed_dim, vision=ViTConfig(**vision), text=TextConfig(**text),
                         preprocess=preprocess or PreprocessConfig(convention="hf"),
                         logit_scale_init=float(hf.get("logit_scale_init_value", 2.6592)))
    return cfg


# transformers' CLIPModel and SiglipModel hold ViT image towers only; open_clip holds this very ResNet.
RESNET_NOT_HF = ("a ResNet image tower (vision.arch=resnet, e.g. tiny-resnet, the demo's model) has no Hugging "
                 "Face equivalent: transformers' CLIPModel / SiglipModel hold ViT image towers only. Write it as "
                 "open_clip (`to`=open_clip), whose ModifiedResNet is this architecture, or train a class-token "
                 "ViT for HF (docs/export.md)")


def hf_model_type(cfg: CLIPConfig) -> str:
    """'clip' or 'siglip': which HF class can express `cfg` exactly; UsageError naming what cannot."""
    v, t = cfg.vision, cfg.text
    if v.arch == "resnet":
        raise UsageError(RESNET_NOT_HF)
    common = {"vision.arch=vit": v.arch == "vit", "vision.stem=patch": v.stem == "patch",
              "vision.norm_first": v.norm_first, "vision.proj_bias": not v.proj_bias, "text.proj": t.proj}
    clip = {**common, "vision.pool=cls": v.pool == "cls", "vision.ln_pre": v.ln_pre,
            "vision.patch_bias=False": not v.patch_bias, "vision.proj": v.proj, "text.causal": t.causal,
            "text.pool in (argmax, eos)": t.pool in ("argmax", "eos"), "text.proj_bias=False": not t.proj_bias,
            "no logit_bias": cfg.logit_bias_init is None,
            "text.eos_token_id != 2": not (t.pool == "eos" and t.eos_token_id == _LEGACY_ARGMAX_EOS)}
    siglip = {**common, "vision.pool=map": v.pool == "map", "vision.ln_pre=False": not v.ln_pre,
              "vision.patch_bias": v.patch_bias, "vision.proj=False": not v.proj, "text.causal=False": not t.causal,
              "text.pool=last": t.pool == "last", "text.proj_bias": t.proj_bias,
              "logit_bias": cfg.logit_bias_init is not None}
    for name, req in (("clip", clip), ("siglip", siglip)):
        if all(req.values()):
            return name
    want = siglip if v.pool == "map" else clip
    bad = [k for k, ok in want.items() if not ok]
    raise UsageError(f"this model cannot be written as an HF {'SiglipModel' if v.pool == 'map' else 'CLIPModel'}: "
                     f"it needs {', '.join(bad)}")


def config_to_hf(cfg: CLIPConfig, *, bos_token_id: int = None, eos_token_id: int = None) -> dict:
    mt = hf_model_type(cfg)
    v, t = cfg.vision, cfg.text
    tc = {"vocab_size": t.vocab_size, "hidden_size": t.width, "intermediate_size": mlp_hidden(t.width, t.mlp_ratio),
          "num_hidden_layers": t.layers, "num_attention_heads": t.heads, "max_position_embeddings": t.context_length,
          "hidden_act": HF_ACTS[t.act], "layer_norm_eps": t.ln_eps, "pad_token_id": t.pad_token_id}
    vc = {"hidden_size": v.width, "intermediate_size": mlp_hidden(v.width, v.mlp_ratio), "num_hidden_layers": v.layers,
          "num_attention_heads": v.heads, "image_size": v.image_size, "patch_size": v.patch_size, "num_channels": 3,
          "hidden_act": HF_ACTS[v.act], "layer_norm_eps": v.ln_eps}
    if bos_token_id is not None:
        tc["bos_token_id"] = bos_token_id
    if mt == "clip":
        tc["eos_token_id"] = _LEGACY_ARGMAX_EOS if t.pool == "argmax" else t.eos_token_id
        tc["projection_dim"] = vc["projection_dim"] = cfg.embed_dim
        return {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": cfg.embed_dim,
                "logit_scale_init_value": cfg.logit_scale_init, "text_config": tc, "vision_config": vc}
    if eos_token_id is not None:
        tc["eos_token_id"] = eos_token_id
    tc["projection_size"] = cfg.embed_dim
    vc["vision_use_head"] = True
    return {"model_type": "siglip", "architectures": ["SiglipModel"], "text_config": tc, "vision_config": vc}


# --------------------------------------------------------------------------------------------- state dicts
def _blocks_from_hf(r: KeyReader, src: str, dst: str, layers: int, out: StateDict) -> None:
    for i in range(layers):
        s, d = f"{src}.encoder.layers.{i}", f"{dst}.transformer.blocks.{i}"
        for kind in ("weight", "bias"):
            out[f"{d}.attn.qkv.{kind}"] = fuse_qkv(*(r.pop(f"{s}.self_attn.{p}_proj.{kind}") for p in "qkv"))
            out[f"{d}.attn.out.{kind}"] = r.pop(f"{s}.self_attn.out_proj.{kind}")
            out[f"{d}.ln_1.{kind}"] = r.pop(f"{s}.layer_norm1.{kind}")
            out[f"{d}.ln_2.{kind}"] = r.pop(f"{s}.layer_norm2.{kind}")
            out[f"{d}.mlp.fc.{kind}"] = r.pop(f"{s}.mlp.fc1.{kind}")
            out[f"{d}.mlp.proj.{kind}"] = r.pop(f"{s}.mlp.fc2.{kind}")


def _blocks_to_hf(sd: StateDict, src: str, dst: str, layers: int, out: StateDict) -> None:
    for i in range(layers):
        s, d = f"{src}.transformer.blocks.{i}", f"{dst}.encoder.layers.{i}"
        for kind in ("weight", "bias"):
            for p, t in zip("qkv", split_qkv(sd[f"{s}.attn.qkv.{kind}"])):
                out[f"{d}.self_attn.{p}_proj.{kind}"] = t
            out[f"{d}.self_attn.out_proj.{kind}"] = sd[f"{s}.attn.out.{kind}"]
            out[f"{d}.layer_norm1.{kind}"] = sd[f"{s}.ln_1.{kind}"]
            out[f"{d}.layer_norm2.{kind}"] = sd[f"{s}.ln_2.{kind}"]
            out[f"{d}.mlp.fc1.{kind}"] = sd[f"{s}.mlp.fc.{kind}"]
            out[f"{d}.mlp.fc2.{kind}"] = sd[f"{s}.mlp.proj.{kind}"]


# HF SigLIP head (vision_model.head.*) <-> native visual.head.*: same modules, MLP names differ.
_HEAD = {"probe": "probe", "attention.in_proj_weight": "attention.in_proj_weight",
         "attention.in_proj_bias": "attention.in_proj_bias", "attention.out_proj.weight": "attention.out_proj.weight",
         "attention.out_proj.bias": "attention.out_proj.bias", "layernorm.weight": "layernorm.weight",
         "layernorm.bias": "layernorm.bias", "mlp.fc1.weight": "mlp.fc.weight", "mlp.fc1.bias": "mlp.fc.bias",
         "mlp.fc2.weight": "mlp.proj.weight", "mlp.fc2.bias": "mlp.proj.bias"}


def _strip_prefix(state: StateDict) -> StateDict:
    # Some repos save the inner model under "model." (e.g. wrappers); HF's CLIPModel keys start with the towers.
    if state and all(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items()}
    return state


def state_from_hf(state: StateDict, cfg: CLIPConfig, source: str = "HF weights") -> StateDict:
    """HF CLIPModel/SiglipModel state dict -> native CLIPModel state dict (leftover keys are an error)."""
    r = KeyReader(_strip_prefix(state), source, ignore=("text_model.embeddings.position_ids",
                                                        "vision_model.embeddings.position_ids"))
    out: StateDict = {}
    siglip = cfg.vision.pool == "map"
    ve, te = "vision_model.embeddings", "text_model.embeddings"
    out["visual.conv.weight"] = r.pop(f"{ve}.patch_embedding.weight")
    if siglip:
        out["visual.conv.bias"] = r.pop(f"{ve}.patch_embedding.bias")
    else:
        out["visual.class_embedding"] = r.pop(f"{ve}.class_embedding")
        for kind in ("weight", "bias"):
            out[f"visual.ln_pre.{kind}"] = r.pop(f"vision_model.pre_layrnorm.{kind}")
    out["visual.positional_embedding"] = r.pop(f"{ve}.position_embedding.weight")
    _blocks_from_hf(r, "vision_model", "visual", cfg.vision.layers, out)
    for kind in ("weight", "bias"):
        out[f"visual.ln_post.{kind}"] = r.pop(f"vision_model.post_layernorm.{kind}")
        out[f"text.ln_final.{kind}"] = r.pop(f"text_model.final_layer_norm.{kind}")
    out["text.token_embedding.weight"] = r.pop(f"{te}.token_embedding.weight")
    out["text.positional_embedding"] = r.pop(f"{te}.position_embedding.weight")
    _blocks_from_hf(r, "text_model", "text", cfg.text.layers, out)
    if siglip:
        for hk, nk in _HEAD.items():
            out[f"visual.head.{nk}"] = r.pop(f"vision_model.head.{hk}")
        out["text.proj.weight"] = r.pop("text_model.head.weight")
        out["text.proj.bias"] = r.pop("text_model.head.bias")
        out["logit_bias"] = r.pop("logit_bias").reshape(())
    else:
        out["visual.proj.weight"] = r.pop("visual_projection.weight")
        out["text.proj.weight"] = r.pop("text_projection.weight")
    out["logit_scale"] = r.pop("logit_scale").reshape(())
    r.finish()
    return out


def state_to_hf(sd: StateDict, cfg: CLIPConfig) -> StateDict:
    """Native CLIPModel state dict -> HF CLIPModel/SiglipModel state dict."""
    siglip = hf_model_type(cfg) == "siglip"
    out: StateDict = {}
    ve, te = "vision_model.embeddings", "text_model.embeddings"
    out[f"{ve}.patch_embedding.weight"] = sd["visual.conv.weight"]
    if siglip:
        out[f"{ve}.patch_embedding.bias"] = sd["visual.conv.bias"]
    else:
        out[f"{ve}.class_embedding"] = sd["visual.class_embedding"]
        for kind in ("weight", "bias"):
            out[f"vision_model.pre_layrnorm.{kind}"] = sd[f"visual.ln_pre.{kind}"]
    out[f"{ve}.position_embedding.weight"] = sd["visual.positional_embedding"]
    _blocks_to_hf(sd, "visual", "vision_model", cfg.vision.layers, out)
    for kind in ("weight", "bias"):
        out[f"vision_model.post_layernorm.{kind}"] = sd[f"visual.ln_post.{kind}"]
        out[f"text_model.final_layer_norm.{kind}"] = sd[f"text.ln_final.{kind}"]
    out[f"{te}.token_embedding.weight"] = sd["text.token_embedding.weight"]
    out[f"{te}.position_embedding.weight"] = sd["text.positional_embedding"]
    _blocks_to_hf(sd, "text", "text_model", cfg.text.layers, out)
    if siglip:
        for hk, nk in _HEAD.items():
            out[f"vision_model.head.{hk}"] = sd[f"visual.head.{nk}"]
        out["text_model.head.weight"] = sd["text.proj.weight"]
        out["text_model.head.bias"] = sd["text.proj.bias"]
        out["logit_bias"] = sd["logit_bias"].reshape(1)
        out["logit_scale"] = sd["logit_scale"].reshape(1)
    else:
        out["visual_projection.weight"] = sd["visual.proj.weight"]
        out["text_projection.weight"] = sd["text.proj.weight"]
        out["logit_scale"] = sd["logit_scale"].reshape(())
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


# ------------------------------------------------------------------------------------------ directories
def is_hf_dir(path) -> bool:
    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    try:
        return read_json_object(p / "config.json").get("model_type") in HF_TYPES
    except ClipforgeError:  # unreadable, not JSON, not an object: not an HF directory (load_model says why)
        return False


def read_hf_weights(path: Path, *, trust_pickle: bool = False) -> StateDict:
    """All weights of an HF directory: model.safetensors, sharded safetensors, or (trusted) pytorch_model.bin."""
    if (path / "model.safetensors").is_file():
        return load_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        state: StateDict = {}
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ClipforgeError(f"{index} has no \"weight_map\" of tensor names to shard files")
        for shard in sorted(set(weight_map.values())):
            state.update(load_safetensors(path / shard))
        return state
    if (path / "pytorch_model.bin").is_file():
        return read_state_dict(path / "pytorch_model.bin", trust_pickle=trust_pickle)
    raise ClipforgeError(f"{path}: no model.safetensors (or sharded index / pytorch_model.bin) found")


def given_hf_tokenizer(tokenizer, cfg: CLIPConfig):
    """A caller's `tokenizer` for an HF model: an object as it is, or a directory (or a tokenizer.json in one)
    of HF tokenizer files, read as transformers would (`load_hf_tokenizer`)."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    d = Path(tokenizer)
    d = d.parent if d.is_file() and d.name in ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model") else d
    has = [(d / f).is_file() for f in ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model")]
    tok = load_hf_tokenizer(d, cfg) if d.is_dir() and (has[0] or all(has[1:3]) or has[3]) else None
    if tok is None:
        raise UsageError(f"`tokenizer` {str(tokenizer)!r}: not a directory of HF tokenizer files for this model "
                         "(tokenizer.json, vocab.json + merges.txt, or a SigLIP spiece.model)")
    return tok


def load_hf_dir(path, *, trust_pickle: bool = False, tokenizer=None):
    """A native CLIPModel from a local HF CLIP/SigLIP directory: config, weights, tokenizer, preprocessing.
    `tokenizer` (an object, or a directory of HF tokenizer files) replaces the directory's own."""
    p = Path(path)
    hf = read_json_object(p / "config.json")
    cfg = config_from_hf(hf)
    image_size, pre = load_hf_preprocess(p, cfg)
    if image_size is not None and image_size != cfg.vision.image_size:
        raise ClipforgeError(f"{p}: preprocessor image size {image_size} != model image_size {cfg.vision.image_size}")
    cfg = cfg.replace(preprocess=pre, name=p.name)
    tok = load_hf_tokenizer(p, cfg) if tokenizer is None else given_hf_tokenizer(tokenizer, cfg)
    if tok is None and cfg.text.vocab_size < 514:
        raise ClipforgeError(f"{p}: no tokenizer files, and the {cfg.text.vocab_size}-id text tower is too small "
                             "for clipforge's byte-level fallback tokenizer (514 ids)")
    state = state_from_hf(read_hf_weights(p, trust_pickle=trust_pickle), cfg, f"HF weights in {p}")
    return assemble(cfg, state, tok, f"converted HF weights from {p}")


def export_hf(model, out_dir, *, overwrite: bool = False) -> Path:
    """Write `model` as an HF directory (config, model.safetensors, tokenizer, preprocessor), atomically."""
    model = unwrap_model(model)
    cfg = model.config
    tok = model.tokenizer
    bos = getattr(tok, "sot_id", None) if tok is not None else None
    eos = getattr(tok, "eot_id", None) if tok is not None else None
    hf = config_to_hf(cfg, bos_token_id=bos, eos_token_id=eos)
    state = state_to_hf(model.state_dict(), cfg)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tok is not None:
            # a causal tower pooled at the end token never sees what follows it: pad with the end token
            save_hf_tokenizer(tok, tmp, hf["model_type"],
                              pad_with_end=cfg.text.causal and cfg.text.pool in ("argmax", "eos"))
        save_hf_preprocess(cfg, tmp, hf["model_type"])

    return write_dir_atomically(Path(out_dir), write, kind="hf-export", overwrite=overwrite,
                                recognise=lambda p: (p / "config.json").is_file() and (p / "model.safetensors").is_file()
                                and (p / "preprocessor_config.json").is_file())
