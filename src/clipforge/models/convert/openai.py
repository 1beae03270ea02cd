"""OpenAI CLIP state-dict layout (also open_clip's for its built-in ViT towers) <-> native.

OpenAI layout: `visual.conv1`, `visual.class_embedding` (W,), `visual.positional_embedding` (1+g*g, W),
`visual.ln_pre`, `visual.transformer.resblocks.i.{ln_1, attn.in_proj_weight (3W, W) fused q|k|v,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `visual.ln_post`, `visual.proj` (W, D) applied as x @ proj;
text: `token_embedding`, `positional_embedding` (ctx, W), `transformer.resblocks.*`, `ln_final`,
`text_projection` (W, D); `logit_scale` (log-space). Native Linear weights are the transposes of the
(W, D) projection parameters. The config is inferred from shapes; head counts are not visible in shapes,
so unless the caller gives them (`vision_heads=`, `text_heads=`) they are guessed by
OpenAI's rule (width // 64), with a warning saying so — a wrong guess loads without error and gives wrong
embeddings. The activation is QuickGELU (what OpenAI's weights were trained with) unless the caller knows
better. OpenAI's official `.pt` files are TorchScript archives; `models.torchscript` reads their tensors
without running their code.
"""
from __future__ import annotations

import gzip
import math
import re
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Optional

from clipforge.errors import ClipforgeError
from clipforge.models.config import CLIPConfig, PreprocessConfig, TextConfig, VisionConfig
from clipforge.models.convert.common import KeyReader, StateDict, assemble, mlp_ratio
from clipforge.models.tokenizer import OPEN_CLIP_PATTERN, Tokenizer, build_clip_backend

# Non-weight entries some OpenAI/open_clip state dicts carry (the JIT archive's metadata, causal-mask buffer).
IGNORED = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _strip_module(state: StateDict) -> StateDict:
    # DDP-saved training checkpoints prefix every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _count_layers(state: StateDict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.resblocks\.(\d+)\.")
    idx = {int(m.group(1)) for k in state for m in [pat.match(k)] if m}
    return max(idx) + 1 if idx else 0


def is_openai_layout(state: StateDict) -> bool:
    state = _strip_module(state)
    return "visual.conv1.weight" in state and "token_embedding.weight" in state


def infer_config(state: StateDict, *, act: str = "quick_gelu", vision_heads: Optional[int] = None,
                 text_heads: Optional[int] = None, text_pool: str = "argmax") -> CLIPConfig:
    """A native config from an OpenAI-layout state dict's shapes (ViT only)."""
    state = _strip_module(state)
    if "visual.conv1.weight" not in state:
        kind = "ResNet (ModifiedResNet)" if "visual.layer1.0.conv1.weight" in state else "unknown"
        raise ClipforgeError(f"not an OpenAI-layout ViT state dict (vision tower looks {kind}); "
                             "only ViT towers convert to clipforge")
    conv = state["visual.conv1.weight"]  # (W, 3, p, p)
    vw, patch = conv.shape[0], conv.shape[-1]
    n_pos = state["visual.positional_embedding"].shape[0]
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise ClipforgeError(f"visual.positional_embedding has {n_pos} rows: not 1 + a square grid")
    tw = state["ln_final.weight"].shape[0]
    v_fc = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    t_fc = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    text_proj = state["text_projection"]
    embed_dim = text_proj.shape[1] if text_proj.ndim == 2 else text_proj.shape[0]
    if "text_projection.weight" in state:  # open_clip proj_bias: a Linear (D, W)
        embed_dim = state["text_projection.weight"].shape[0]
    vision_heads = _heads(vision_heads, int(vw), "vision")
    text_heads = _heads(text_heads, int(tw), "text")
    return CLIPConfig(
        embed_dim=int(embed_dim),
        vision=VisionConfig(
            image_size=int(patch * grid), patch_size=int(patch), width=int(vw),
            layers=_count_layers(state, "visual.transformer"), heads=vision_heads,
            mlp_ratio=mlp_ratio(int(v_fc), int(vw), "visual mlp"), act=act, pool="cls",
            ln_pre="visual.ln_pre.weight" in state,
        ),
        text=TextConfig(
            vocab_size=int(state["token_embedding.weight"].shape[0]),
            context_length=int(state["positional_embedding"].shape[0]), width=int(tw),
            layers=_count_layers(state, "transformer"), heads=text_heads,
            mlp_ratio=mlp_ratio(int(t_fc), int(tw), "text mlp"), act=act, pool=text_pool,
            proj_bias="text_projection.bias" in state,
        ),
        preprocess=PreprocessConfig(),
        logit_bias_init=0.0 if "logit_bias" in state else None,
    )


def _heads(given: Optional[int], width: int, tower: str) -> int:
    """The head count given for a tower, or OpenAI's width // 64 with a warning (shapes cannot tell)."""
    if given is not None:
        return int(given)
    if width < 64 or width % 64:
        raise ClipforgeError(f"{tower} width {width} is not a multiple of 64, so OpenAI's heads = width // 64 rule "
                             f"cannot apply: give the head count (`{tower}_heads`)")
    warnings.warn(f"{tower} heads guessed as width {width} // 64 = {width // 64} (OpenAI's rule; shapes do not "
                  f"show head counts): if the model was trained otherwise, pass `{tower}_heads`", stacklevel=3)
    return width // 64


def _blocks_from(r: KeyReader, src: str, dst: str, layers: int, out: StateDict) -> None:
    for i in range(layers):
        s, d = f"{src}.resblocks.{i}", f"{dst}.transformer.blocks.{i}"
        out[f"{d}.attn.qkv.weight"] = r.pop(f"{s}.attn.in_proj_weight")
        out[f"{d}.attn.qkv.bias"] = r.pop(f"{s}.attn.in_proj_bias")
        for kind in ("weight", "bias"):
            out[f"{d}.attn.out.{kind}"] = r.pop(f"{s}.attn.out_proj.{kind}")
            out[f"{d}.ln_1.{kind}"] = r.pop(f"{s}.ln_1.{kind}")
            out[f"{d}.ln_2.{kind}"] = r.pop(f"{s}.ln_2.{kind}")
            out[f"{d}.mlp.fc.{kind}"] = r.pop(f"{s}.mlp.c_fc.{kind}")
            out[f"{d}.mlp.proj.{kind}"] = r.pop(f"{s}.mlp.c_proj.{kind}")


def _blocks_to(sd: StateDict, src: str, dst: str, layers: int, out: StateDict) -> None:
    for i in range(layers):
        s, d = f"{src}.transformer.blocks.{i}", f"{dst}.resblocks.{i}"
        out[f"{d}.attn.in_proj_weight"] = sd[f"{s}.attn.qkv.weight"]
        out[f"{d}.attn.in_proj_bias"] = sd[f"{s}.attn.qkv.bias"]
        for kind in ("weight", "bias"):
            out[f"{d}.attn.out_proj.{kind}"] = sd[f"{s}.attn.out.{kind}"]
            out[f"{d}.ln_1.{kind}"] = sd[f"{s}.ln_1.{kind}"]
            out[f"{d}.ln_2.{kind}"] = sd[f"{s}.ln_2.{kind}"]
            out[f"{d}.mlp.c_fc.{kind}"] = sd[f"{s}.mlp.fc.{kind}"]
            out[f"{d}.mlp.c_proj.{kind}"] = sd[f"{s}.mlp.proj.{kind}"]


def state_from_openai(state: StateDict, cfg: CLIPConfig, source: str = "OpenAI-layout weights") -> StateDict:
    """OpenAI/open_clip-layout state dict -> native state dict (leftover keys are an error)."""
    r = KeyReader(_strip_module(state), source, ignore=IGNORED)
    out: StateDict = {}
    out["visual.conv.weight"] = r.pop("visual.conv1.weight")
    out["visual.class_embedding"] = r.pop("visual.class_embedding")
    out["visual.positional_embedding"] = r.pop("visual.positional_embedding")
    for kind in ("weight", "bias"):
        if cfg.vision.ln_pre:
            out[f"visual.ln_pre.{kind}"] = r.pop(f"visual.ln_pre.{kind}")
        out[f"visual.ln_post.{kind}"] = r.pop(f"visual.ln_post.{kind}")
        out[f"text.ln_final.{kind}"] = r.pop(f"ln_final.{kind}")
    _blocks_from(r, "visual.transformer", "visual", cfg.vision.layers, out)
    out["visual.proj.weight"] = r.pop("visual.proj").t()  # (W, D) -> Linear weight (D, W)
    out["text.token_embedding.weight"] = r.pop("token_embedding.weight")
    out["text.positional_embedding"] = r.pop("positional_embedding")
    _blocks_from(r, "transformer", "text", cfg.text.layers, out)
    if cfg.text.proj_bias:  # open_clip proj_bias=True: an nn.Linear
        out["text.proj.weight"] = r.pop("text_projection.weight")
        out["text.proj.bias"] = r.pop("text_projection.bias")
    else:
        out["text.proj.weight"] = r.pop("text_projection").t()
    out["logit_scale"] = r.pop("logit_scale").reshape(())
    if cfg.logit_bias_init is not None:
        out["logit_bias"] = r.pop("logit_bias").reshape(())
    r.finish()
    return out


def state_to_openai(sd: StateDict, cfg: CLIPConfig) -> StateDict:
    """Native state dict -> OpenAI/open_clip layout (caller checks the config is expressible)."""
    out: StateDict = {}
    out["visual.conv1.weight"] = sd["visual.conv.weight"]
    out["visual.class_embedding"] = sd["visual.class_embedding"]
    out["visual.positional_embedding"] = sd["visual.positional_embedding"]
    for kind in ("weight", "bias"):
        if cfg.vision.ln_pre:
            out[f"visual.ln_pre.{kind}"] = sd[f"visual.ln_pre.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[f"visual.ln_post.{kind}"]
        out[f"ln_final.{kind}"] = sd[f"text.ln_final.{kind}"]
    _blocks_to(sd, "visual", "visual.transformer", cfg.vision.layers, out)
    out["visual.proj"] = sd["visual.proj.weight"].t()
    out["token_embedding.weight"] = sd["text.token_embedding.weight"]
    out["positional_embedding"] = sd["text.positional_embedding"]
    _blocks_to(sd, "text", "transformer", cfg.text.layers, out)
    if cfg.text.proj_bias:
        out["text_projection.weight"] = sd["text.proj.weight"]
        out["text_projection.bias"] = sd["text.proj.bias"]
    else:
        out["text_projection"] = sd["text.proj.weight"].t()
    out["logit_scale"] = sd["logit_scale"].reshape(())
    if "logit_bias" in sd:
        out["logit_bias"] = sd["logit_bias"].reshape(())
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def openai_tokenizer(context_length: int, vocab_size: int):
    """OpenAI's 49408-id BPE, read from open_clip's bundled vocabulary file when open_clip is installed."""
    spec = find_spec("open_clip")
    bpe = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz" if spec and spec.origin else None
    if vocab_size != 49408 or bpe is None or not bpe.is_file():
        why = ("OpenAI's BPE file comes with open_clip_torch, which is not installed" if vocab_size == 49408
               else "only OpenAI's 49408-id BPE is known for state-dict files")
        warnings.warn(f"no tokenizer for this {vocab_size}-id text tower ({why}): texts get clipforge's "
                      "byte-level tokenizer, whose ids do NOT match the original")
        return None
    return tokenizer_from_bpe_file(bpe, context_length)


def tokenizer_from_bpe_file(path, context_length: int = 77):
    """open_clip's SimpleTokenizer from an OpenAI merges file (`bpe_simple_vocab_16e6.txt.gz`): the same ids,
    cleaning, word pattern and rule that the words <start_of_text> / <end_of_text> in a text are the special
    ids (`parse_special`; "<|endoftext|>" is never special)."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]  # the slice OpenAI's tokenizer uses
    return Tokenizer(build_clip_backend(merges, OPEN_CLIP_PATTERN), context_length, clean="openai",
                     parse_special=True)


def load_openai_state(state: StateDict, *, source: str = "state dict", cfg: Optional[CLIPConfig] = None,
                      tokenizer=None, vision_heads: Optional[int] = None, text_heads: Optional[int] = None):
    """A native model from an OpenAI/open_clip-layout state dict; config inferred unless given (head counts
    from `vision_heads` / `text_heads`, else guessed with a warning)."""
    state = _strip_module(state)
    if not is_openai_layout(state):
        raise ClipforgeError(f"{source}: not an OpenAI/open_clip-layout CLIP state dict (no visual.conv1.weight "
                             "/ token_embedding.weight); HF checkpoints load from their directory")
    cfg = cfg or infer_config(state, vision_heads=vision_heads, text_heads=text_heads)
    if tokenizer is None:
        tokenizer = openai_tokenizer(cfg.text.context_length, cfg.text.vocab_size)
    return assemble(cfg, state_from_openai(state, cfg, source), tokenizer, f"converted {source}")
