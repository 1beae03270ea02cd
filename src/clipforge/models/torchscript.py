"""Tensors out of a TorchScript archive (OpenAI's official CLIP `.pt` files) without running any of its code.

A TorchScript `.pt` is a zip: `<name>/data.pkl` pickles the module tree (objects of `__torch__.*` classes
whose state holds tensors and child modules), `<name>/data/<key>` hold the raw tensor storages, and
`<name>/code/` the TorchScript program. `torch.jit.load` compiles and runs that program; `torch.load` refuses
the archive under `weights_only=True`. Here the pickle is read by an unpickler that resolves exactly four
kinds of global — the tensor-rebuild function (re-implemented here), storage dtypes, `OrderedDict`, and the
`__torch__` module classes (as inert records of their state) — and refuses every other global, so no code
from the file can run. The module tree is then flattened into a state dict (`visual.conv1.weight`, ...).
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import torch

from clipforge.errors import ClipforgeError

_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
# Attributes OpenAI's modules hold as plain tensors that are not weights (the causal mask).
NOT_WEIGHTS = ("attn_mask",)


class _Module:
    """An inert stand-in for a `__torch__.*` object: it only keeps the state the pickle gives it."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def is_torchscript_archive(path) -> bool:
    """A zip holding `*/data.pkl` and `*/code/...` (what torch.jit.save writes)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names)


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2, from a flat tensor over the storage bytes (checked bounds)."""
    if not (isinstance(offset, int) and all(isinstance(x, int) and x >= 0 for x in (*size, *stride))):
        raise pickle.UnpicklingError("malformed tensor record")
    need = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if offset < 0 or need > storage.numel():
        raise pickle.UnpicklingError(f"tensor of size {tuple(size)} runs past its storage")
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "__torch__" or module.startswith("__torch__."):
            return _Module
        raise pickle.UnpicklingError(f"refusing global {module}.{name}: only tensors and module state are read")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent record {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                info = self.archive.getinfo(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key!r} is missing from the archive") from None
            itemsize = torch.empty((), dtype=kind.dtype).element_size()
            if not isinstance(numel, int) or numel < 0 or info.file_size < numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key!r} holds {info.file_size} bytes, not {numel} elements")
            data = bytearray(self.archive.read(name)[: numel * itemsize])
            self.storages[key] = torch.frombuffer(data, dtype=kind.dtype) if numel else \
                torch.empty(0, dtype=kind.dtype)
        return self.storages[key]


def _flatten(obj, prefix: str, out: dict, depth: int = 0) -> None:
    if depth > 64:
        raise ClipforgeError("TorchScript module tree nested more than 64 deep")
    state = obj.state if isinstance(obj, _Module) else obj
    if not isinstance(state, dict):
        return
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor):
            if key not in NOT_WEIGHTS:
                out[prefix + key] = value
        elif isinstance(value, (_Module, dict)):
            _flatten(value, f"{prefix}{key}.", out, depth + 1)


def read_torchscript_state(path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive as a flat state dict; no code from the file runs."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise ClipforgeError(f"{p.name}: not a TorchScript archive (no single <name>/data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in z.namelist() \
                else "little"
            if order != "little":
                raise ClipforgeError(f"{p.name}: {order}-endian tensors are not supported")
            with z.open(pkl[0]) as f:
                root = _Unpickler(f, z, prefix).load()
    except (zipfile.BadZipFile, OSError) as e:
        raise ClipforgeError(f"{p.name}: cannot read the TorchScript archive ({e})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError) as e:
        raise ClipforgeError(f"{p.name}: not a readable TorchScript weights archive ({str(e).splitlines()[0]})"
                             ) from None
    state: dict[str, torch.Tensor] = {}
    _flatten(root, "", state)
    if not state:
        raise ClipforgeError(f"{p.name}: the TorchScript archive holds no tensors")
    return state
