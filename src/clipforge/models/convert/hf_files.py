"""The non-weight files of an HF model directory: tokenizer and image preprocessing, both ways.

Tokenizers: `tokenizer.json` (read with the same Rust library HF's fast tokenizers use, padding and
truncation switched off: the clipforge Tokenizer pads and truncates itself), else `vocab.json` + `merges.txt`
(built with CLIP's pipeline, exactly as transformers' CLIPTokenizer does); for SigLIP, `spiece.model` (as
transformers' SiglipTokenizer, see `siglip_tokenizer.py`). Special tokens and the pad token come from
`tokenizer_config.json` / `special_tokens_map.json`.
Preprocessing: `preprocessor_config.json` gives size, crop vs squash, resample filter and mean/std; a
directory without one gets the model family's documented defaults and a warning, never a silent guess.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Tuple

from tokenizers import Tokenizer as _Backend
from tokenizers import models, processors

from clipforge.errors import ClipforgeError, UsageError
from clipforge.json_file import read_json_object
from clipforge.models.config import CLIPConfig, PreprocessConfig
from clipforge.models.tokenizer import Tokenizer, _clip_pipeline
from clipforge.models.convert.siglip_tokenizer import load_siglip_tokenizer, save_siglip_tokenizer

# PIL resample codes as stored by HF image processors.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_RESAMPLE_CODE = {v: k for k, v in _RESAMPLE.items()}


def _read_json(path: Path) -> dict:
    return read_json_object(path) if path.is_file() else {}


def _token_str(v) -> Optional[str]:
    if isinstance(v, dict):  # AddedToken serialised as {"content": ..., ...}
        return v.get("content")
    return v


def _special(path: Path, key: str, default: Optional[str]) -> Optional[str]:
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        v = _token_str(_read_json(path / f).get(key))
        if v:
            return v
    return default


# ------------------------------------------------------------------------------------------- tokenizers
def clip_backend_from_files(vocab_file: Path, merges_file: Path, specials=()) -> _Backend:
    """A CLIP BPE backend from vocab.json + merges.txt (any vocab layout), built as transformers' CLIPTokenizer
    builds it: CLIP's word split, then GPT-2's byte-level pre-split."""
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = []
    for line in merges_file.read_text(encoding="utf-8").split("\n"):
        if not line.strip() or line.startswith("#version"):
            continue
        a, b = line.split(" ")  # CLIP merges hold no spaces inside symbols (spaces are byte-mapped)
        merges.append((a, b))
    unk = "<|endoftext|>" if "<|endoftext|>" in vocab else None
    bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="",
                     fuse_unk=False, unk_token=unk)
    tok = _clip_pipeline(_Backend(bpe), byte_regex=True)
    tok.add_special_tokens([s for s in specials if s])
    return tok


def load_hf_tokenizer(path, cfg: CLIPConfig) -> Optional[Tokenizer]:
    """The clipforge Tokenizer equivalent to the HF tokenizer saved in `path` (None, with a warning, if none)."""
    p = Path(path)
    siglip = cfg.vision.pool == "map"
    # A start token is added when the directory names one (SigLIP's own tokenizers have none, but a
    # CLIP-style BPE exported beside a SigLIP model does, and transformers adds it).
    bos = _special(p, "bos_token", None if siglip else "<|startoftext|>")
    eos = _special(p, "eos_token", "</s>" if siglip else "<|endoftext|>")
    pad = _special(p, "pad_token", eos)
    tok_class = _read_json(p / "tokenizer_config.json").get("tokenizer_class")
    if siglip and (p / "spiece.model").is_file() and tok_class in (None, "SiglipTokenizer"):
        # What transformers loads for SigLIP (SiglipTokenizer, sentencepiece), even beside a tokenizer.json.

        tok = load_siglip_tokenizer(p / "spiece.model", cfg.text.context_length, eos=eos, pad=pad,
                                    unk=_special(p, "unk_token", "<unk>"))
        if tok.vocab_size > cfg.text.vocab_size:
            raise ClipforgeError(f"{p}: tokenizer has {tok.vocab_size} ids, the text tower only {cfg.text.vocab_size}")
        return tok
    if (p / "tokenizer.json").is_file():
        backend = _Backend.from_file(str(p / "tokenizer.json"))
        backend.no_padding()
        backend.no_truncation()
    elif (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
        backend = clip_backend_from_files(p / "vocab.json", p / "merges.txt", (bos, eos, pad))
    elif (p / "spiece.model").is_file():
        warnings.warn(f"{p}: spiece.model is only read for SigLIP models (tokenizer_class SiglipTokenizer), not "
                      f"for this {tok_class or 'CLIP'} tokenizer: the model gets clipforge's byte-level tokenizer, "
                      "whose ids do NOT match the original")
        return None
    else:
        warnings.warn(f"{p} holds no tokenizer files (tokenizer.json, vocab.json+merges.txt, spiece.model): "
                      "the model gets clipforge's byte-level tokenizer, whose ids do NOT match the original")
        return None
    pad_id = backend.token_to_id(pad) if pad else None
    if pad_id is None:
        raise ClipforgeError(f"{p}: pad token {pad!r} is not in the tokenizer vocabulary")
    tok = Tokenizer(backend, cfg.text.context_length, pad_id=pad_id, add_sot=bos is not None, add_eot=True,
                    sot_token=bos or "<|startoftext|>", eot_token=eos)
    if cfg.text.pool == "eos" and tok.eot_id != cfg.text.eos_token_id:
        warnings.warn(f"{p}: the text config pools at eos_token_id {cfg.text.eos_token_id} but the tokenizer's "
                      f"end token {eos!r} has id {tok.eot_id}")
    if tok.vocab_size > cfg.text.vocab_size:
        raise ClipforgeError(f"{p}: tokenizer has {tok.vocab_size} ids, the text tower only {cfg.text.vocab_size}")
    return tok


def _is_added(backend: _Backend, token: str) -> bool:
    """Whether `token` is one of the tokenizer's added (special) tokens, never produced from text."""
    return any(t.content == token for t in backend.get_added_tokens_decoder().values())


def save_hf_tokenizer(tok: Tokenizer, out: Path, model_type: str, pad_with_end: bool = False) -> None:
    """Write tokenizer.json (+ vocab.json/merges.txt for BPE) and tokenizer_config.json that HF loads; a SigLIP
    tokenizer (clean="siglip") is written as spiece.model for transformers' SiglipTokenizer.

    The pad token: transformers treats it as special wherever it appears in a text, so a pad token that is
    also text (CLIP's id 0 is "!") would change every text holding one ("a!b"). With `pad_with_end` (a causal
    text tower pooled at its end token, which never sees what follows it) the end token pads, as OpenAI's
    own HF exports do; the ids after the end token then differ from clipforge's, the embeddings do not."""
    if tok.clean == "siglip":
        return save_siglip_tokenizer(tok, out)
    backend = _Backend.from_str(tok.backend.to_str())
    specials = []
    if tok.add_sot:
        specials.append((tok.sot_token, tok.sot_id))
    specials.append((tok.eot_token, tok.eot_id))
    single = " ".join(([f"{tok.sot_token}:0"] if tok.add_sot else []) + ["$A:0", f"{tok.eot_token}:0"])
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    backend.no_padding()
    backend.no_truncation()
    (out / "tokenizer.json").write_text(backend.to_str(), encoding="utf-8")
    model = json.loads(backend.to_str())["model"]
    is_clip_bpe = model.get("type") == "BPE" and model.get("end_of_word_suffix") == "</w>" and tok.add_sot
    if is_clip_bpe:
        (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""),
                                        encoding="utf-8")
    pad = backend.id_to_token(tok.pad_id)
    specials_text = {tok.eot_token, tok.sot_token if tok.add_sot else None}
    if pad not in specials_text and backend.token_to_id(pad) is not None and not _is_added(backend, pad):
        if pad_with_end:
            pad = tok.eot_token
        else:
            warnings.warn(f"the pad token {pad!r} is also ordinary text: transformers will read {pad!r} in a text as "
                          "padding, so such texts embed differently there (this text tower attends past its "
                          "end token, so the end token cannot pad instead)")
    conf = {
        # CLIPTokenizer rebuilds CLIP's pipeline itself; anything else is read from tokenizer.json as-is.
        "tokenizer_class": "CLIPTokenizer" if is_clip_bpe else "PreTrainedTokenizerFast",
        "eos_token": tok.eot_token, "pad_token": pad, "unk_token": tok.eot_token if is_clip_bpe else None,
        "model_max_length": tok.context_length, "clipforge": tok.config(),
    }
    if tok.add_sot:
        conf["bos_token"] = tok.sot_token
    if model_type == "siglip":
        # SigLIP's text tower attends to padding (no mask, as big_vision and SiglipTokenizer): without this
        # transformers would pass an attention_mask that SiglipModel applies and clipforge does not.
        conf["model_input_names"] = ["input_ids"]
    (out / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in conf.items() if v is not None},
                                                          indent=2), encoding="utf-8")


# ------------------------------------------------------------------------------------------ preprocessing
def _hw(v) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, int):
        return v
    if "shortest_edge" in v:
        return int(v["shortest_edge"])
    if v.get("height") != v.get("width"):
        raise ClipforgeError(f"non-square image size {v} is not supported")
    return int(v["height"])


def load_hf_preprocess(path, cfg: CLIPConfig) -> Tuple[Optional[int], PreprocessConfig]:
    """(image size the processor produces, PreprocessConfig) from preprocessor_config.json."""
    p = Path(path)
    pc = _read_json(p / "preprocessor_config.json")
    if not pc:
        warnings.warn(f"{p} has no preprocessor_config.json: using the {cfg.vision.pool == 'map' and 'SigLIP' or 'CLIP'}"
                      " family defaults for mean/std/resize; check them against the model card")
        return None, cfg.preprocess
    size = pc.get("size")
    crop = pc.get("crop_size") if pc.get("do_center_crop", False) else None
    shortest = isinstance(size, dict) and "shortest_edge" in size or isinstance(size, int)
    if crop is not None or shortest:
        mode = "shortest"
        out_size = _hw(crop) if crop is not None else _hw(size)
        if shortest and crop is not None and _hw(size) != _hw(crop):
            warnings.warn(f"{p}: resize to {_hw(size)} then crop {_hw(crop)} is approximated by resizing the "
                          f"shortest side straight to {_hw(crop)} (clipforge has no separate crop fraction)")
    else:
        mode, out_size = "squash", _hw(size)
    resample = int(pc.get("resample", 3))
    if resample not in _RESAMPLE:
        raise ClipforgeError(f"{p}: resample filter {resample} has no clipforge equivalent "
                             f"(supported: {', '.join(f'{k}={v}' for k, v in _RESAMPLE.items())})")
    if pc.get("do_rescale", True) and abs(float(pc.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ClipforgeError(f"{p}: rescale_factor {pc['rescale_factor']} != 1/255 is not supported")
    mean, std = (0.0,) * 3, (1.0,) * 3
    if pc.get("do_normalize", True):
        mean = tuple(float(x) for x in pc.get("image_mean", cfg.preprocess.mean))
        std = tuple(float(x) for x in pc.get("image_std", cfg.preprocess.std))
    pre = PreprocessConfig(mean=mean, std=std, interpolation=_RESAMPLE[resample], resize_mode=mode,
                           crop_scale=cfg.preprocess.crop_scale, hflip=cfg.preprocess.hflip, convention="hf")
    return out_size, pre


def save_hf_preprocess(cfg: CLIPConfig, out: Path, model_type: str) -> None:
    pre, s = cfg.preprocess, cfg.vision.image_size
    if pre.per_image_norm:
        raise UsageError("per-image normalisation has no HF image-processor equivalent; cannot export")
    conf = {"do_resize": True, "resample": _RESAMPLE_CODE[pre.interpolation], "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(pre.mean), "image_std": list(pre.std),
            "do_convert_rgb": True}
    if pre.resize_mode == "squash":
        conf.update(size={"height": s, "width": s}, do_center_crop=False)
    else:
        conf.update(size={"shortest_edge": s}, do_center_crop=True, crop_size={"height": s, "width": s})
    conf["image_processor_type"] = "SiglipImageProcessor" if model_type == "siglip" else "CLIPImageProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(conf, indent=2), encoding="utf-8")
