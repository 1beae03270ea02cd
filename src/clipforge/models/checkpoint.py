"""The clipforge checkpoint format: writing and reading checkpoint directories (no model construction here;
`loading.py` builds models from what this reads).

A clipforge checkpoint is a directory: `config.json` (model config), `model.safetensors`, `tokenizer.json` +
`tokenizer_config.json`, `preprocess.json`. It is written to a temporary sibling directory and renamed into
place, so a crash never leaves a half-written checkpoint under the final name.

Pickled `.pt/.bin` weights are refused unless the caller passes `trust_pickle=True`, and are then read with
`torch.load(weights_only=True)`. TorchScript archives (OpenAI's official `.pt` files) are read without
running their code (`torchscript.py`), so they need no trust.

Every way a checkpoint can be broken — config.json that is not JSON or lacks its `config`, a config that
fails validation (ranges, divisibility, a model over the parameter limit, all checked before allocating),
weights of the wrong shapes, a truncated or fake `.safetensors`, a pickle the weights-only unpickler refuses,
a NaN or infinite weight — is one `ClipforgeError` / `UsageError` line naming the file. The shapes are
checked against the `.safetensors` header (`read_safetensors_header`: the header alone is read) before any
tensor is read or the model is built.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from clipforge.atomic import atomic_directory
from clipforge.json_file import read_json_file
from clipforge.output_dirs import vet_output_dir
from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.budget import check_memory, format_count
from clipforge.models.config import CLIPConfig
from clipforge.models.config_family import config_from_dict
from clipforge.models.param_count import count_parameters
from clipforge.models.torchscript import is_torchscript_archive, read_torchscript_state
from clipforge.models.tokenizer import Tokenizer
from clipforge.models.unwrap import unwrap_model

__all__ = ["FORMAT", "FORMAT_VERSION", "save_pretrained", "read_config_json", "is_checkpoint_dir",
           "read_checkpoint_dir", "vet_checkpoint_dir", "load_safetensors", "read_safetensors_header",
           "check_header_shapes", "header_bytes", "check_finite", "read_state_dict", "load_state_dict_strict"]

FORMAT = "clipforge"
FORMAT_VERSION = 1
PathLike = Union[str, Path]


def save_pretrained(model, path: PathLike, extra: Optional[Callable[[Path], None]] = None, *,
                    overwrite: bool = False) -> Path:
    """Write `model` as a checkpoint directory at `path`, atomically (temp dir + rename).

    `path` may be new, empty or an earlier checkpoint; anything else is refused unless `overwrite`
    (`clipforge.output_dirs`).

    `extra(tmp_dir)` may write more files (e.g. the trainer's state) before the directory is renamed into
    place, so they appear together with the weights or not at all.
    """
    model = unwrap_model(model)
    cfg = model.config

    def write(tmp: Path) -> None:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cfg.to_dict()}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
        pre = dict(dataclasses.asdict(cfg.preprocess), image_size=cfg.vision.image_size)
        (tmp / "preprocess.json").write_text(json.dumps(pre, indent=2))
        if extra is not None:
            extra(tmp)

    return atomic_directory(path, write, kind="checkpoint", overwrite=overwrite, recognise=_recognise)


def vet_checkpoint_dir(path: PathLike, overwrite: bool = False) -> Path:
    """Fail fast, before a long job, when `save_pretrained(..., path)` would be refused; return the path."""
    return vet_output_dir(path, "checkpoint", overwrite=overwrite, recognise=_recognise)[0]


def _recognise(path: Path) -> bool:
    """Whether `path` holds a clipforge checkpoint an older version wrote (without the folder marker)."""
    try:
        meta = read_config_json(path)
    except ClipforgeError:
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def read_config_json(path: PathLike) -> Optional[dict]:
    """A directory's config.json as a dict; None when there is none; `ClipforgeError` when it is unreadable,
    not JSON, or not a JSON object."""
    f = Path(path) / "config.json"
    if not f.is_file():
        return None
    meta = read_json_file(f)
    if not isinstance(meta, dict):
        raise ClipforgeError(f"{f} is not a JSON object")
    return meta


def is_checkpoint_dir(path: PathLike) -> bool:
    try:
        meta = read_config_json(path)
    except ClipforgeError:
        return False
    return meta is not None and meta.get("format") == FORMAT


def _not_safetensors(p: Path, e: Exception) -> ClipforgeError:
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    what = " (it looks like a pickle / torch.save file renamed)" if head[:1] == b"\x80" or head[:2] == b"PK" else ""
    return ClipforgeError(f"{p.name} is not a valid safetensors file{what}: {str(e).splitlines()[0][:200]}")


def load_safetensors(path: PathLike) -> dict:
    """`safetensors.torch.load_file`, with a truncated or fake file as one `ClipforgeError` line."""
    p = Path(path)
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(p, e) from None


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_safetensors_header(path: PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, safetensors dtype) of every tensor in a `.safetensors` file, from its header alone (no
    tensor is read); a truncated or fake file (a renamed pickle, a header claiming a gigabyte) is one
    `ClipforgeError` line."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (tuple(int(x) for x in sl.get_shape()), str(sl.get_dtype()))
            return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(p, e) from None


def header_bytes(header: dict) -> int:
    """The bytes the tensors a header describes take once read."""
    return sum(math.prod(shape) * _DTYPE_BYTES.get(dtype, 8) for shape, dtype in header.values())


def check_header_shapes(header: dict, expected: dict[str, tuple[int, ...]], source: str) -> None:
    """`ClipforgeError` unless the file's tensors (`read_safetensors_header`) are exactly `expected`'s names
    with its shapes: checked before anything is read or built."""
    wrong = [f"{k} {shape} vs {expected[k]}" for k, (shape, _) in header.items()
             if k in expected and tuple(shape) != tuple(expected[k])]
    if wrong:
        raise ClipforgeError(f"{source} do not match the model's shapes (stored vs config): {'; '.join(wrong[:5])}"
                             f"{f' (+{len(wrong) - 5} more)' if len(wrong) > 5 else ''}")
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise ClipforgeError(f"{source} do not match the model: missing {missing[:10]}"
                             f"{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                             f"{'...' if len(unexpected) > 10 else ''}")


_FINITE_CHUNK = 1 << 24  # elements checked at a time: the temporary mask stays at 16 MB whatever the tensor


def check_finite(state: dict, source: str) -> None:
    """`ClipforgeError` naming the first tensor holding a NaN or an infinity (such weights make every output
    NaN, silently)."""
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()) or t.is_meta:
            continue
        flat = t.detach().reshape(-1)
        for i in range(0, flat.numel(), _FINITE_CHUNK):
            part = flat[i:i + _FINITE_CHUNK]
            if not bool(torch.isfinite(part).all()):
                bad = part[~torch.isfinite(part)][0].item()
                raise ClipforgeError(f"{source}: tensor {name} holds {bad} values (non-finite weights would make "
                                     "every embedding NaN): refusing to load it")


def _unpickler_complaint(e: Exception) -> str:
    """The informative line of torch's multi-paragraph weights_only refusal."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported" in ln or "GLOBAL" in ln or "not an allowed global" in ln:
            return ln[:300]
    return (lines[0] if lines else type(e).__name__)[:300]


def read_checkpoint_dir(path: PathLike, expected_shapes: Optional[Callable[[CLIPConfig], dict]] = None
                        ) -> tuple[CLIPConfig, Optional[Tokenizer], dict]:
    """(config, tokenizer or None, state dict) of a checkpoint directory, every part checked: config.json
    readable with a "config" object of a supported format version, the config valid (ranges, parameter
    bound: nothing is allocated before it passes), the weights a real safetensors file of finite values.

    With `expected_shapes` (config -> {name: shape} of its model, `factory.expected_state_shapes`), the
    weight file's header is compared with them and the memory the weights and the model will take with the
    budget (`clipforge.models.budget`), before a tensor is read."""
    p = Path(path)
    meta = read_config_json(p)
    if meta is None:
        raise ClipforgeError(f"{p} has no config.json")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ClipforgeError(f"{p}/config.json: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ClipforgeError(f"{p} was written by a newer clipforge (format {version})")
    if not isinstance(meta.get("config"), dict):
        raise ClipforgeError(f"{p}/config.json has no \"config\" object (the model's architecture)")
    cfg = config_from_dict(meta["config"])  # CLIP or CoCa (`family`), validated, bounded: nothing allocated
    weights = p / "model.safetensors"
    if not weights.is_file():
        raise ClipforgeError(f"{p} has no model.safetensors")
    header = read_safetensors_header(weights)
    if expected_shapes is not None:
        item = torch.get_default_dtype().itemsize
        n = count_parameters(cfg)
        check_memory(n * item, f"the model {p}/config.json describes ({format_count(n)} parameters)")
        shapes = expected_shapes(cfg)
        check_header_shapes(header, shapes, f"weights in {p}")
        check_memory(header_bytes(header) + n * item,
                     f"the model in {p} ({format_count(n)} parameters, read and built)")
    state = load_safetensors(weights)  # read (and checked) before the model is built
    check_finite(state, f"weights in {p}")
    tok = Tokenizer.load(p) if (p / "tokenizer.json").exists() else None
    return cfg, tok, state


def read_state_dict(path: PathLike, *, trust_pickle: bool = False) -> dict:
    """Weights from `.safetensors`, a TorchScript archive (tensors only, no code runs), or from a pickle only
    when the caller trusts it (weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise ClipforgeError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        return load_safetensors(p)
    if is_torchscript_archive(p):
        return read_torchscript_state(p)
    if not trust_pickle:
        raise UsageError(f"refusing to load pickled weights {p.name}: pickles can run code. Convert to "
                         ".safetensors, or pass `trust_pickle` if you trust the file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is ours
            warnings.simplefilter("ignore")
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, OSError) as e:
        raise ClipforgeError(f"{p.name}: refused by the weights-only unpickler, not plain weights "
                             f"({_unpickler_complaint(e)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ClipforgeError(f"{p.name} does not hold a state dict (names -> tensors)")
    return obj


def load_state_dict_strict(model, state: dict, source: str = "weights") -> None:
    """Load `state` into `model`: every name and shape must match, and every floating tensor be finite."""
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:  # load_state_dict would raise a 60-line RuntimeError
        raise ClipforgeError(f"{source} do not match the model's shapes (stored vs config): {'; '.join(wrong[:5])}"
                             f"{f' (+{len(wrong) - 5} more)' if len(wrong) > 5 else ''}")
    check_finite(state, source)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ClipforgeError(f"{source} do not match the model: missing {sorted(missing)[:10]}"
                             f"{'...' if len(missing) > 10 else ''}, unexpected {sorted(unexpected)[:10]}"
                             f"{'...' if len(unexpected) > 10 else ''}")
