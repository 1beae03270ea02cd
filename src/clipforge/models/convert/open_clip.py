"""open_clip <-> native: architecture configs, `open_clip:ARCH/TAG` references, and export.

open_clip's built-in ViT CLIP towers store weights in OpenAI's layout (see `openai.py`), its ModifiedResNet
towers (`vision_cfg.layers` a list: native `vision.arch: resnet`) theirs (`open_clip_resnet.py`); what the weights
cannot tell — activation (open_clip's `quick_gelu` flag: plain GELU unless set, QuickGELU for OpenAI's own
weights), head counts, text pooling, preprocessing — comes from open_clip's model config and the pretrained
tag's config. When open_clip is installed its registry is used (all architectures, all tags, downloads);
without it a few common architectures are known here and weights must be a local file, whose tokenizer must
then come from the caller or from files beside it (OpenAI's BPE ships with open_clip, not with clipforge).
An open_clip directory (`open_clip_config.json` + weights, open_clip's `local-dir:` / HF-hub format) loads
directly and is what `export_open_clip` writes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

from safetensors.torch import save_file

from clipforge.errors import ClipforgeError, UsageError
from clipforge.json_file import read_json_object
from clipforge.models.config import (OPENAI_MEAN, OPENAI_STD, CLIPConfig, PreprocessConfig, ResNetConfig, TextConfig,
                                     VisionConfig, ViTConfig)
from clipforge.models.convert.common import write_dir_atomically
from clipforge.models.unwrap import unwrap_model
from clipforge.models.convert.hub import network_error
from clipforge.models.convert.open_clip_coca import is_open_clip_coca, load_open_clip_coca
from clipforge.models.checkpoint import read_state_dict
from clipforge.models.convert.openai import OPENAI_VOCAB_SIZE, load_openai_state, state_to_openai

_TEXT_B = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
_TEXT_L = {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}
# Architectures known without open_clip installed (copied from open_clip's model_configs).
BUILTIN_ARCHS = {
    "ViT-B-32": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
                 "text_cfg": _TEXT_B},
    "ViT-B-16": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
                 "text_cfg": _TEXT_B},
    "ViT-L-14": {"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
                 "text_cfg": _TEXT_L},
}
for _n in list(BUILTIN_ARCHS):
    BUILTIN_ARCHS[f"{_n}-quickgelu"] = {**BUILTIN_ARCHS[_n], "quick_gelu": True}

# Config keys whose default value is the only one the native model reproduces exactly.
_V_DEFAULTS = {"ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "pos_embed_type": "learnable",
               "final_ln_after_pool": False, "pool_type": "tok", "output_tokens": False, "act_kwargs": None,
               "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
               "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "timm_model_name": None,
               "attn_pooler_queries": 256, "attn_pooler_heads": 8, "timm_model_pretrained": False,
               "timm_pool": "avg", "timm_proj": "linear", "timm_proj_bias": False, "timm_drop": 0.0,
               "timm_drop_path": None}
_T_DEFAULTS = {"hf_tokenizer_name": None, "tokenizer_mode": None, "tokenizer_kwargs": None, "ls_init_value": None,
               "embed_cls": False, "final_ln_after_pool": False, "proj_type": "linear", "output_tokens": False,
               "act_kwargs": None, "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
               "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
               "hf_model_name": None, "hf_model_pretrained": True, "hf_proj_type": "mlp", "hf_pooler_type":
               "mean_pooler", "use_pad_mask": False, "correct_cls_mask": False, "attn_pooler_heads": 8}
_TOP_OK = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias", "cast_dtype",
           "custom_text"}


def _check_defaults(d: dict, defaults: dict, known: set, where: str) -> None:
    bad = {k: v for k, v in d.items() if k in defaults and v != defaults[k]}
    unknown = sorted(set(d) - set(defaults) - known)
    if bad or unknown:
        raise ClipforgeError(f"open_clip {where}: settings clipforge's native towers cannot reproduce: "
                             f"{bad or ''}{' unknown keys ' + str(unknown) if unknown else ''}")


def _eps(d: dict) -> float:
    return float((d.get("norm_kwargs") or {}).get("eps", 1e-5))


def config_from_open_clip(model_cfg: dict, preprocess: Optional[dict] = None, *, quick_gelu: Optional[bool] = None,
                          name: str = "") -> CLIPConfig:
    """A native config from an open_clip model config (+ its preprocess config)."""
    vc, tc = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    extra = sorted(set(model_cfg) - _TOP_OK)
    if extra:
        raise ClipforgeError(f"open_clip config keys not supported: {extra}")
    _check_defaults(vc, _V_DEFAULTS, {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size",
                                      "no_ln_pre", "norm_kwargs"}, "vision_cfg")
    _check_defaults(tc, _T_DEFAULTS, {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio",
                                      "pad_id", "eos_id", "no_causal_mask", "pool_type", "proj_bias",
                                      "norm_kwargs"}, "text_cfg")
    qg = model_cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu
    act = "quick_gelu" if qg else "gelu"  # open_clip: QuickGELU only when asked, else exact nn.GELU
    width = int(vc.get("width", 768))
    pool = tc.get("pool_type", "argmax")
    if pool not in ("argmax", "eos", "first", "last"):
        raise ClipforgeError(f"open_clip text pool_type {pool!r} has no native equivalent")
    pre = dict(preprocess or {})
    if pre.get("resize_mode", "shortest") not in ("shortest", "squash"):
        raise ClipforgeError(f"open_clip resize_mode {pre['resize_mode']!r} (letterbox) has no native equivalent")
    image_size = vc.get("image_size", 224)
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    if isinstance(vc.get("layers", 12), (list, tuple)):  # ModifiedResNet: width * 32 // head_width heads
        vision = ResNetConfig(image_size=image_size, width=width, stage_layers=tuple(vc["layers"]),
                              heads=width * 32 // int(vc.get("head_width", 64)))
    else:
        vision = ViTConfig(
            image_size=image_size, patch_size=int(vc.get("patch_size", 16)), width=width,
            layers=int(vc.get("layers", 12)), heads=width // int(vc.get("head_width", 64)),
            mlp_ratio=float(vc.get("mlp_ratio", 4.0)), act=act, pool="cls", ln_pre=not vc.get("no_ln_pre", False),
            ln_eps=_eps(vc))
    return CLIPConfig(
        embed_dim=int(model_cfg["embed_dim"]),
        vision=vision,
        text=TextConfig(
            vocab_size=int(tc.get("vocab_size", 49408)), context_length=int(tc.get("context_length", 77)),
            width=int(tc.get("width", 512)), layers=int(tc.get("layers", 12)), heads=int(tc.get("heads", 8)),
            mlp_ratio=float(tc.get("mlp_ratio", 4.0)), act=act, causal=not tc.get("no_causal_mask", False),
            pool=pool, eos_token_id=int(tc.get("eos_id", 2)) if pool == "eos" else None,
            pad_token_id=int(tc.get("pad_id", 0)), proj_bias=bool(tc.get("proj_bias", False)), ln_eps=_eps(tc),
        ),
        preprocess=PreprocessConfig(mean=tuple(pre.get("mean", OPENAI_MEAN)), std=tuple(pre.get("std", OPENAI_STD)),
                                    interpolation=pre.get("interpolation", "bicubic"),
                                    resize_mode=pre.get("resize_mode", "shortest")),
        logit_bias_init=float(model_cfg["init_logit_bias"]) if model_cfg.get("init_logit_bias") is not None else None,
        name=name,
    )


def _open_clip():
    try:
        import open_clip
    except ImportError:
        return None
    return open_clip


def _arch_config(arch: str) -> dict:
    oc = _open_clip()
    cfg = oc.get_model_config(arch) if oc is not None else BUILTIN_ARCHS.get(arch)
    if not cfg:
        known = sorted(oc.list_models()) if oc is not None else sorted(BUILTIN_ARCHS)
        raise UsageError(f"unknown open_clip architecture {arch!r}; known: {', '.join(known[:40])}"
                         f"{' ...' if len(known) > 40 else ''}"
                         f"{'' if oc else ' (install open_clip_torch for its full registry)'}")
    return cfg


def _download_tag(arch: str, tag: str) -> Tuple[Path, dict]:
    oc = _open_clip()
    if oc is None:
        raise UsageError(f"open_clip:{arch}/{tag} needs open_clip_torch for its pretrained registry "
                         "(pip install open_clip_torch), or pass open_clip:ARCH with a local `weights` file")
    pcfg = oc.get_pretrained_cfg(arch, tag)
    if not pcfg:
        tags = [t for m, t in oc.list_pretrained() if m == arch]
        raise UsageError(f"open_clip has no pretrained tag {tag!r} for {arch}; tags: {', '.join(tags) or 'none'}")

    try:
        path = oc.download_pretrained(pcfg)
    except Exception as e:  # urllib / huggingface_hub errors when offline
        raise network_error(f"open_clip:{arch}/{tag}", e) from e
    if not path:
        raise ClipforgeError(f"open_clip could not download {arch}/{tag}")
    return Path(path), pcfg


def load_open_clip(spec: str, *, weights=None, trust_pickle: bool = False, tokenizer=None):
    """`ARCH/TAG` (open_clip registry + download) or `ARCH` with a local `weights` file -> native model. The
    tokenizer: `tokenizer`, else tokenizer files beside the weights, else open_clip's (`checkpoint_tokenizer`)."""
    arch, _, tag = spec.partition("/")
    model_cfg = _arch_config(arch)
    pre, quick = dict(model_cfg.get("preprocess_cfg", {})), None
    if tag:
        path, pcfg = _download_tag(arch, tag)
        pre.update({k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg})
        quick = bool(pcfg.get("quick_gelu", model_cfg.get("quick_gelu", False)))
        weights = weights or path
    elif weights is None:
        raise UsageError(f"open_clip:{arch} needs weights: give a pretrained tag (open_clip:{arch}/TAG) or a local "
                         "`weights` file")
    # Files open_clip itself fetched for a registry tag are as trusted as open_clip (still weights_only=True).
    state = read_state_dict(weights, trust_pickle=trust_pickle or bool(tag))
    if is_open_clip_coca(model_cfg):  # coca_ViT-B-32 ...: a contrastive captioner (open_clip_coca.py)
        return load_open_clip_coca(state, model_cfg, preprocess=pre, quick_gelu=quick, name=spec, tokenizer=tokenizer,
                                   directory=Path(weights).parent, source=f"open_clip:{spec} weights")
    cfg = config_from_open_clip(model_cfg, pre, quick_gelu=quick, name=spec)
    return load_openai_state(state, source=f"open_clip:{spec} weights", cfg=cfg, tokenizer=tokenizer,
                             directory=Path(weights).parent)


def is_open_clip_dir(path) -> bool:
    return (Path(path) / "open_clip_config.json").is_file()


def load_open_clip_dir(path, *, trust_pickle: bool = False, tokenizer=None):
    """An open_clip directory (open_clip_config.json + weights, as on the HF hub or `export_open_clip`). The
    tokenizer: `tokenizer`, else the directory's files, else open_clip's (`checkpoint_tokenizer`)."""
    p = Path(path)
    conf = read_json_object(p / "open_clip_config.json")
    if not isinstance(conf.get("model_cfg"), dict):
        raise ClipforgeError(f"{p}/open_clip_config.json has no \"model_cfg\" object (the model's architecture)")
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth"):
        if (p / name).is_file():
            break
    else:
        raise ClipforgeError(f"{p}: no open_clip weights (open_clip_model.safetensors / open_clip_pytorch_model.bin)")
    if is_open_clip_coca(conf["model_cfg"]):
        return load_open_clip_coca(read_state_dict(p / name, trust_pickle=trust_pickle), conf["model_cfg"],
                                   preprocess=conf.get("preprocess_cfg"), name=p.name, tokenizer=tokenizer,
                                   directory=p, source=f"open_clip CoCa weights in {p}")
    cfg = config_from_open_clip(conf["model_cfg"], conf.get("preprocess_cfg"), name=p.name)
    # export_open_clip also leaves clipforge's own tokenizer files, so custom BPE vocabularies survive.
    return load_openai_state(read_state_dict(p / name, trust_pickle=trust_pickle), source=f"open_clip weights in {p}",
                             cfg=cfg, tokenizer=tokenizer, directory=p)


# ------------------------------------------------------------------------------------------------- export
def _vision_to_open_clip(v: VisionConfig, text_act: str) -> Tuple[dict, dict]:
    """(what open_clip's vision_cfg needs that `v` lacks, by name -> met; the vision_cfg)."""
    if v.arch == "resnet":  # open_clip's ModifiedResNet: heads = width * 32 // head_width (exact here)
        return {}, {"image_size": v.image_size, "layers": list(v.stage_layers), "width": v.width,
                    "head_width": v.width * 32 // v.heads}
    need = {"vision.arch in vit/resnet": v.arch == "vit", "vision.stem=patch": v.stem == "patch",
            "vision.pool=cls": v.pool == "cls", "vision.proj": v.proj, "vision.proj_bias=False": not v.proj_bias,
            "vision.patch_bias=False": not v.patch_bias, "vision.norm_first": v.norm_first,
            "same activation in both towers": v.act == text_act}
    vc = {"image_size": v.image_size, "layers": v.layers, "width": v.width, "head_width": v.width // v.heads,
          "mlp_ratio": v.mlp_ratio, "patch_size": v.patch_size}
    if not v.ln_pre:
        vc["no_ln_pre"] = True
    if v.ln_eps != 1e-5:
        vc["norm_kwargs"] = {"eps": v.ln_eps}
    return need, vc


def config_to_open_clip(cfg: CLIPConfig) -> dict:
    v, t = cfg.vision, cfg.text
    need, vc = _vision_to_open_clip(v, t.act)
    need.update({"text.proj": t.proj, "activation quick_gelu or gelu": t.act in ("quick_gelu", "gelu"),
                 "text.pool in argmax/eos/first/last": t.pool in ("argmax", "eos", "first", "last")})
    bad = [k for k, ok in need.items() if not ok]
    if bad:
        raise UsageError(f"this model cannot be written as an open_clip model: it needs {', '.join(bad)}")
    tc = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width, "heads": t.heads,
          "layers": t.layers, "mlp_ratio": t.mlp_ratio, "pool_type": t.pool, "pad_id": t.pad_token_id,
          "proj_bias": t.proj_bias, "no_causal_mask": not t.causal}
    if t.pool == "eos":
        tc["eos_id"] = t.eos_token_id
    if t.ln_eps != 1e-5:
        tc["norm_kwargs"] = {"eps": t.ln_eps}
    mc = {"embed_dim": cfg.embed_dim, "quick_gelu": t.act == "quick_gelu", "vision_cfg": vc, "text_cfg": tc}
    if cfg.logit_bias_init is not None:
        mc["init_logit_bias"] = cfg.logit_bias_init
    pre = cfg.preprocess
    if pre.per_image_norm:
        raise UsageError("per-image normalisation has no open_clip equivalent; cannot export")
    return {"model_cfg": mc, "preprocess_cfg": {"size": v.image_size, "mean": list(pre.mean), "std": list(pre.std),
                                               "interpolation": pre.interpolation, "resize_mode": pre.resize_mode}}


def _open_clip_reads_it_otherwise(tok, cfg: CLIPConfig) -> Optional[str]:
    """Why open_clip would tokenize this model's texts differently (it reads a `local-dir:` export with OpenAI's
    BPE whenever the text tower has that BPE's 49,408 ids), or None."""
    if cfg.text.vocab_size != OPENAI_VOCAB_SIZE:
        return None  # other ids: open_clip cannot run its own BPE on this tower at all (an error, not a silent one)
    if tok is None:
        return "the model carries no tokenizer"
    backend = json.loads(tok.backend.to_str())["model"]
    if tok.vocab_size != OPENAI_VOCAB_SIZE or backend.get("end_of_word_suffix") != "</w>" or not tok.add_sot:
        return f"its tokenizer ({tok.vocab_size} ids) is not OpenAI's 49,408-id BPE"
    return None


def export_open_clip(model, out_dir, *, overwrite: bool = False) -> Path:
    """Write open_clip_config.json + open_clip_model.safetensors (open_clip: `create_model('local-dir:DIR')`).

    Refused when open_clip would silently read the export's texts with other ids than clipforge: a 49,408-id
    text tower whose tokenizer is not OpenAI's BPE (clipforge's byte-level stand-in, say), since open_clip
    takes that BPE for any such tower. clipforge reads its own copy (`clipforge_tokenizer/`) either way."""
    model = unwrap_model(model)
    why = _open_clip_reads_it_otherwise(model.tokenizer, model.config)
    if why is not None:
        raise UsageError(f"cannot export to open_clip: {why}, and open_clip reads a 49,408-id text tower with "
                         "OpenAI's BPE, so every text would get other ids there than here; load the model with "
                         "its real tokenizer (`tokenizer`, or open_clip installed) before exporting, or export "
                         "to clipforge's own format (save_pretrained)")
    conf = config_to_open_clip(model.config)
    state = state_to_openai(model.state_dict(), model.config)

    def write(tmp: Path) -> None:
        (tmp / "open_clip_config.json").write_text(json.dumps(conf, indent=2))
        save_file(state, str(tmp / "open_clip_model.safetensors"), metadata={"format": "pt"})
        if model.tokenizer is not None:
            model.tokenizer.save(tmp / "clipforge_tokenizer")

    return write_dir_atomically(Path(out_dir), write, kind="open_clip-export", overwrite=overwrite,
                                recognise=lambda p: (p / "open_clip_config.json").is_file())
