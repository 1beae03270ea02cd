"""OpenAI CLIP state-dict layout (also open_clip's for its built-in ViT and ModifiedResNet towers) <-> native.

OpenAI layout: `visual.conv1`, `visual.class_embedding` (W,), `visual.positional_embedding` (1+g*g, W),
`visual.ln_pre`, `visual.transformer.resblocks.i.{ln_1, attn.in_proj_weight (3W, W) fused q|k|v,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `visual.ln_post`, `visual.proj` (W, D) applied as x @ proj;
text: `token_embedding`, `positional_embedding` (ctx, W), `transformer.resblocks.*`, `ln_final`,
`text_projection` (W, D); `logit_scale` (log-space). A ModifiedResNet image tower (OpenAI's RN50 ..., open_clip's
RN configs, clipforge's `vision.arch: resnet`) has the same text keys and its own `visual.*` names
(`open_clip_resnet.py`). Native Linear weights are the transposes of the
(W, D) projection parameters. The config is inferred from shapes; head counts are not visible in shapes,
so unless the caller gives them (`vision_heads=`, `text_heads=`) they are guessed by
OpenAI's rule (width // 64), with a warning saying so — a wrong guess loads without error and gives wrong
embeddings. The activation is QuickGELU (what OpenAI's weights were trained with) unless the caller knows
better. OpenAI's official `.pt` files are TorchScript archives; `models.torchscript` reads their tensors
without running their code. The tokenizer is never guessed either (`checkpoint_tokenizer`): the caller's, the
checkpoint directory's own files, or OpenAI's BPE from an installed open_clip, else the load is refused.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import warnings
import zlib
from importlib.util import find_spec
from pathlib import Path
from typing import List, Optional, Tuple

from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.config import CLIPConfig, PreprocessConfig, TextConfig, ViTConfig, vision_config
from clipforge.models.convert.common import KeyReader, StateDict, assemble, mlp_ratio
from clipforge.models.convert.hf_files import load_hf_tokenizer
from clipforge.models.convert.open_clip_resnet import (infer_resnet, is_resnet_layout, resnet_from_open_clip,
                                                       resnet_to_open_clip)
from clipforge.models.tokenizer import EOT, OPEN_CLIP_PATTERN, SOT, Tokenizer, build_clip_backend, bytes_to_unicode

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
    """A native config from an OpenAI-layout state dict's shapes (ViT or ModifiedResNet image tower)."""
    state = _strip_module(state)
    if "visual.conv1.weight" not in state:
        raise ClipforgeError("not an OpenAI-layout state dict: no visual.conv1.weight (neither a ViT's patch "
                             "embedding nor a ModifiedResNet's stem)")
    tw = state["ln_final.weight"].shape[0]
    t_fc = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    text_proj = state["text_projection"]
    embed_dim = text_proj.shape[1] if text_proj.ndim == 2 else text_proj.shape[0]
    if "text_projection.weight" in state:  # open_clip proj_bias: a Linear (D, W)
        embed_dim = state["text_projection.weight"].shape[0]
    text_heads = _heads(text_heads, int(tw), "text")
    if is_resnet_layout(state):  # OpenAI's rule for its RN models: attention-pool width // 64 heads
        pool_width = int(state["visual.attnpool.q_proj.weight"].shape[0])
        vision = vision_config(**infer_resnet(state, _heads(vision_heads, pool_width, "vision")))
    else:
        vision = _infer_vit(state, act, vision_heads)
    return CLIPConfig(
        embed_dim=int(embed_dim),
        vision=vision,
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


def _infer_vit(state: StateDict, act: str, heads: Optional[int]) -> ViTConfig:
    conv = state["visual.conv1.weight"]  # (W, 3, p, p)
    vw, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_pos = state["visual.positional_embedding"].shape[0]
    grid = math.isqrt(n_pos - 1)
    if grid * grid != n_pos - 1:
        raise ClipforgeError(f"visual.positional_embedding has {n_pos} rows: not 1 + a square grid")
    v_fc = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    return ViTConfig(image_size=patch * grid, patch_size=patch, width=vw,
                     layers=_count_layers(state, "visual.transformer"), heads=_heads(heads, vw, "vision"),
                     mlp_ratio=mlp_ratio(int(v_fc), vw, "visual mlp"), act=act, pool="cls",
                     ln_pre="visual.ln_pre.weight" in state)


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
    if cfg.vision.arch == "resnet":  # open_clip's / OpenAI's ModifiedResNet: renamed keys
        resnet_from_open_clip(r, out)
    else:
        out["visual.conv.weight"] = r.pop("visual.conv1.weight")
        out["visual.class_embedding"] = r.pop("visual.class_embedding")
        out["visual.positional_embedding"] = r.pop("visual.positional_embedding")
        for kind in ("weight", "bias"):
            if cfg.vision.ln_pre:
                out[f"visual.ln_pre.{kind}"] = r.pop(f"visual.ln_pre.{kind}")
            out[f"visual.ln_post.{kind}"] = r.pop(f"visual.ln_post.{kind}")
        _blocks_from(r, "visual.transformer", "visual", cfg.vision.layers, out)
        out["visual.proj.weight"] = r.pop("visual.proj").t()  # (W, D) -> Linear weight (D, W)
    for kind in ("weight", "bias"):
        out[f"text.ln_final.{kind}"] = r.pop(f"ln_final.{kind}")
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
    if cfg.vision.arch == "resnet":
        out.update(resnet_to_open_clip(sd))
    else:
        out["visual.conv1.weight"] = sd["visual.conv.weight"]
        out["visual.class_embedding"] = sd["visual.class_embedding"]
        out["visual.positional_embedding"] = sd["visual.positional_embedding"]
        for kind in ("weight", "bias"):
            if cfg.vision.ln_pre:
                out[f"visual.ln_pre.{kind}"] = sd[f"visual.ln_pre.{kind}"]
            out[f"visual.ln_post.{kind}"] = sd[f"visual.ln_post.{kind}"]
        _blocks_to(sd, "visual", "visual.transformer", cfg.vision.layers, out)
        out["visual.proj"] = sd["visual.proj.weight"].t()
    for kind in ("weight", "bias"):
        out[f"ln_final.{kind}"] = sd[f"text.ln_final.{kind}"]
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


OPENAI_BPE = "bpe_simple_vocab_16e6.txt.gz"  # OpenAI's merges file, as OpenAI's CLIP and open_clip ship it
OPENAI_VOCAB_SIZE = 49408


def installed_openai_bpe() -> Optional[Path]:
    """OpenAI's merges file from an installed open_clip (found without importing it), or None."""
    try:
        spec = find_spec("open_clip")
    except (ImportError, ValueError):  # a module entry of None (import blocked) or without a spec
        return None
    bpe = Path(spec.origin).parent / OPENAI_BPE if spec and spec.origin else None
    return bpe if bpe is not None and bpe.is_file() else None


def openai_tokenizer(context_length: int, vocab_size: int) -> Optional[Tokenizer]:
    """OpenAI's 49408-id BPE, read from the vocabulary file an installed open_clip carries; None without
    open_clip, or for another vocabulary size (only OpenAI's is known without the checkpoint's own files)."""
    bpe = installed_openai_bpe()
    if vocab_size != OPENAI_VOCAB_SIZE or bpe is None:
        return None
    return tokenizer_from_bpe_file(bpe, context_length)


def open_clip_tokenizer(merges, context_length: int = 77) -> Tokenizer:
    """open_clip's SimpleTokenizer for OpenAI-layout BPE `merges`: the same ids, cleaning, word pattern and rule
    that the words <start_of_text> / <end_of_text> in a text are the special ids (`parse_special`;
    "<|endoftext|>" is never special)."""
    return Tokenizer(build_clip_backend(merges, OPEN_CLIP_PATTERN), context_length, clean="openai",
                     parse_special=True)


def tokenizer_from_bpe_file(path, context_length: int = 77):
    """open_clip's SimpleTokenizer from an OpenAI merges file (`bpe_simple_vocab_16e6.txt.gz`), see
    `open_clip_tokenizer`."""
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise ClipforgeError(f"{path}: not a readable BPE merges file ({type(e).__name__}: {e})") from None
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1] if m.strip()]  # the slice OpenAI's uses
    if not merges or any(len(m) != 2 for m in merges):
        raise ClipforgeError(f"{path}: not an OpenAI BPE merges file (lines of two symbols after a version line)")
    return open_clip_tokenizer(merges, context_length)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ClipforgeError(f"{path} is not readable JSON ({type(e).__name__}: {str(e)[:160]})") from None
    return out if isinstance(out, dict) else {}


def _hf_bpe(d: Path) -> Optional[Tuple[dict, List[Tuple[str, str]]]]:
    """(vocab, merges) of a CLIP-style BPE (end-of-word `</w>`) in HF's files: tokenizer.json, else vocab.json +
    merges.txt. None when the directory has neither, or its tokenizer is not a CLIP BPE."""
    if (d / "tokenizer.json").is_file():
        model = _read_json(d / "tokenizer.json").get("model") or {}
        if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
            return None
        raw = model.get("merges") or []
        vocab = model.get("vocab") or {}
    elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        vocab = _read_json(d / "vocab.json")
        raw = [line for line in (d / "merges.txt").read_text(encoding="utf-8").split("\n")
               if line.strip() and not line.startswith("#version")]
    else:
        return None
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw]
    if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
        return None
    return vocab, merges


def _is_openai_layout(vocab: dict, merges) -> bool:
    """Whether `vocab` is exactly what OpenAI's and open_clip's tokenizers build from `merges`: 256 byte
    symbols, the same with `</w>`, one token per merge, then the start and end tokens."""
    base = list(bytes_to_unicode().values())
    expected = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [SOT, EOT]
    return len(vocab) == len(expected) and all(vocab.get(t) == i for i, t in enumerate(expected))


def directory_tokenizer(directory, cfg: CLIPConfig) -> Optional[Tokenizer]:
    """The tokenizer an OpenAI / open_clip checkpoint's directory holds, or None when it holds none.

    In this order: clipforge's own (`clipforge_tokenizer/`, which `export_open_clip` writes, or a tokenizer.json
    whose tokenizer_config.json carries clipforge's settings: `Tokenizer.save`), then HF's files (tokenizer.json,
    else vocab.json + merges.txt), then OpenAI's merges file (`bpe_simple_vocab_16e6.txt.gz`). A CLIP BPE in
    OpenAI's vocabulary layout — what open_clip's and OpenAI's tokenizers build, and what the hub's copies of
    their tokenizers hold — tokenizes exactly as open_clip does (its cleaning, word pattern and special words,
    padding with 0); any other vocabulary as transformers would (`load_hf_tokenizer`)."""
    d = Path(directory)
    if (d / "clipforge_tokenizer").is_dir():
        return Tokenizer.load(d / "clipforge_tokenizer")
    if (d / "tokenizer.json").is_file() and "clipforge" in _read_json(d / "tokenizer_config.json"):
        return Tokenizer.load(d)
    bpe = _hf_bpe(d)
    if bpe is not None and _is_openai_layout(*bpe):
        return open_clip_tokenizer(bpe[1], cfg.text.context_length)
    if (d / "tokenizer.json").is_file() or ((d / "vocab.json").is_file() and (d / "merges.txt").is_file()):
        return load_hf_tokenizer(d, cfg)
    if (d / OPENAI_BPE).is_file():
        return tokenizer_from_bpe_file(d / OPENAI_BPE, cfg.text.context_length)
    return None


TOKENIZER_FILES = "tokenizer.json, vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz"


def given_tokenizer(tokenizer, cfg: CLIPConfig):
    """The `tokenizer` a caller passed: a tokenizer object as it is, or a path — a tokenizer directory (read by
    `directory_tokenizer`), a tokenizer.json inside one, or OpenAI's merges file (.txt.gz)."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    p = Path(tokenizer)
    if p.is_file() and p.name.endswith(".gz"):
        return tokenizer_from_bpe_file(p, cfg.text.context_length)
    d = p.parent if p.is_file() and p.name in ("tokenizer.json", "vocab.json", "merges.txt") else p
    tok = directory_tokenizer(d, cfg) if d.is_dir() else None
    if tok is None:
        raise UsageError(f"`tokenizer` {str(p)!r}: not a tokenizer directory ({TOKENIZER_FILES}, or a clipforge "
                         "tokenizer) nor OpenAI's BPE merges file")
    return tok


def checkpoint_tokenizer(cfg: CLIPConfig, *, directory=None, source: str = "checkpoint", tokenizer=None):
    """The tokenizer of an OpenAI / open_clip checkpoint, from the first source that has it: `tokenizer` as
    the caller gave it (`given_tokenizer`), the checkpoint directory's own files (`directory_tokenizer`), or
    OpenAI's BPE from an installed open_clip (for 49408-id towers). None of them is an error, never a
    fallback: clipforge's byte-level tokenizer would give every text ids the weights were not trained on, and
    every zero-shot and search result would be wrong."""
    if tokenizer is not None:
        return given_tokenizer(tokenizer, cfg)
    tok = directory_tokenizer(directory, cfg) if directory is not None and Path(directory).is_dir() else None
    if tok is None:
        tok = openai_tokenizer(cfg.text.context_length, cfg.text.vocab_size)
    if tok is not None:
        return tok
    vocab = cfg.text.vocab_size
    holds = f"{directory} holds no tokenizer files" if directory is not None else "no checkpoint directory was given"
    put = f"put its tokenizer files ({TOKENIZER_FILES}) in {directory}" if directory is not None else \
        f"put its tokenizer files ({TOKENIZER_FILES}) beside the weights"
    wrong = "clipforge's byte-level tokenizer would give texts ids the weights were not trained on"
    if vocab == OPENAI_VOCAB_SIZE:
        raise ClipforgeError(f"{source}: no tokenizer for its text tower (open_clip_torch, which carries OpenAI's "
                             f"BPE, is not installed and {holds}; {wrong}): pip install open_clip_torch, {put}, "
                             "or pass `tokenizer`")
    raise ClipforgeError(f"{source}: no tokenizer for its {vocab}-id text tower ({holds}, and only OpenAI's "
                         f"{OPENAI_VOCAB_SIZE}-id BPE is known without them; {wrong}): {put}, or pass `tokenizer`")


def load_openai_state(state: StateDict, *, source: str = "state dict", cfg: Optional[CLIPConfig] = None,
                      tokenizer=None, directory=None, vision_heads: Optional[int] = None,
                      text_heads: Optional[int] = None):
    """A native model from an OpenAI/open_clip-layout state dict; config inferred unless given (head counts
    from `vision_heads` / `text_heads`, else guessed with a warning). The tokenizer is `tokenizer`, else the
    one in `directory` (the checkpoint's), else an installed open_clip's: none is an error
    (`checkpoint_tokenizer`)."""
    state = _strip_module(state)
    if not is_openai_layout(state):
        raise ClipforgeError(f"{source}: not an OpenAI/open_clip-layout CLIP state dict (no visual.conv1.weight "
                             "/ token_embedding.weight); HF checkpoints load from their directory")
    cfg = cfg or infer_config(state, vision_heads=vision_heads, text_heads=text_heads)
    native = state_from_openai(state, cfg, source)  # the weights' own errors (leftover keys ...) come first
    tokenizer = checkpoint_tokenizer(cfg, directory=directory, source=source, tokenizer=tokenizer)
    return assemble(cfg, native, tokenizer, f"converted {source}")
