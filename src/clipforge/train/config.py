"""Training configuration: typed sections loaded from YAML, `section.key=value` overrides, strict keys.

    model:    {name: tiny, overrides: {...}, tokenizer: train, tokenizer_vocab_size: 1024, lock_image: false, ...}
    data:     {train: "jsonl:path/train.jsonl", batch_size: 128, workers: 2, val: "imagefolder:path/val", ...}
              (reinforcement: DIR, a store from `clipforge data reinforce`, for clip+distill)
    optim:    {lr: 5e-4, weight_decay: 0.2, betas: [0.9, 0.98], eps: 1e-6, grad_clip: 1.0}
    schedule: {name: cosine, warmup_steps: 50, min_lr: 0.0}
    loss:     {name: clip, options: {chunk_size: null}}
    run:      {steps: 1000, seed: 0, precision: bf16, checkpoint_every: 200, keep_checkpoints: 3, ...}
    adapt:    {method: lora, rank: 8, alpha: 16, targets: [attn.qkv, attn.out], towers: [image, text], ...}

Unknown keys raise a `UsageError` naming the section and listing the valid keys; a value of the wrong type
raises one naming the key, and so does one out of range (`clipforge.train.config_checks`), before anything is
built. A config is a YAML file or the name of one shipped inside the package (`load_config("demo-digits")`;
`packaged_configs()` lists them). YAML from a file or an override value is parsed with `parse_yaml`, bounded
(`clipforge.train.config_yaml`). The sections themselves are `clipforge.train.config_sections`.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from clipforge.data.fs import FileRefused, read_regular
from clipforge.data.sources.trust import StoredSpec, accept_stored, stored_spec
from clipforge.errors import UsageError
from clipforge.train.config_sections import SECTIONS, TrainConfig
from clipforge.train.config_yaml import parse_yaml

MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is refused before it is parsed


def _valid(cls) -> List[str]:
    return [f.name for f in dataclasses.fields(cls)]


def config_from_dict(d: Dict[str, Any]) -> TrainConfig:
    d = d or {}
    unknown = sorted(set(d) - set(SECTIONS))
    if unknown:
        raise UsageError(f"unknown config section(s) {unknown}; valid sections: {', '.join(SECTIONS)}")
    kwargs = {}
    for name, cls in SECTIONS.items():
        sec = d.get(name) or {}
        if not isinstance(sec, dict):
            raise UsageError(f"config section {name!r} must be a mapping, got {type(sec).__name__}")
        bad = sorted(set(sec) - set(_valid(cls)))
        if bad:
            raise UsageError(f"unknown key(s) {bad} in section {name!r}; valid keys: {', '.join(_valid(cls))}")
        kwargs[name] = cls(**{k: _coerce(cls, name, k, v) for k, v in sec.items()})
    return TrainConfig(**kwargs)


def _coerce(cls, section: str, key: str, value):
    """Convert a value to the field's declared type (YAML reads `1e-3` as a string); reject what cannot be."""
    hint = typing.get_type_hints(cls)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise UsageError(f"{section}.{key} cannot be null")
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if typing.get_origin(base) is list and typing.get_args(base) == (float,):  # optim.betas
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{section}.{key}: expected a list of numbers, got {value!r}")
        return [_coerce_number(section, key, v) for v in value]
    if typing.get_origin(base) is dict and not isinstance(value, dict):
        raise UsageError(f"{section}.{key}: expected a mapping, got {value!r}")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{section}.{key}: expected {getattr(base, '__name__', base)}, got {value!r}")
    return value


def _coerce_number(section: str, key: str, value) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{section}.{key}: expected numbers, got {value!r}") from None


def apply_overrides(d: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML: 1e-3, true, [1, 2], null)."""
    d = json.loads(json.dumps(d or {}))
    for item in overrides or ():
        if "=" not in item:
            raise UsageError(f"`overrides`: expected section.key=value, got {item!r}")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        if len(keys) < 2:
            raise UsageError(f"`overrides` {item!r}: the key must name a section, e.g. optim.lr=1e-3")
        value = parse_yaml(raw, f"`overrides` {item[:80]!r}: value")
        node = d
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UsageError(f"`overrides` {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return d


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package (usable wherever a config path is)."""
    return sorted(f.name[:-5] for f in resources.files("clipforge").joinpath("configs").iterdir()
                  if f.name.endswith(".yaml"))


def read_config_text(config: Union[str, Path]) -> str:
    """The YAML text of a config file, or of a packaged config named with or without `.yaml`."""
    p = Path(config)
    if p.is_file():
        try:
            data = read_regular(p, max_bytes=MAX_CONFIG_BYTES)
        except FileRefused as e:
            if e.reason == "too_large":
                raise UsageError(f"config file {p} is over {MAX_CONFIG_BYTES >> 20} MB: not a training config") from None
            raise UsageError(f"cannot read config file {e.detail}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"config file {p} is not UTF-8 text (byte {e.start}): not a YAML config") from None
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if str(config) in (name, f"{name}.yaml") and name in packaged_configs():
        return resources.files("clipforge").joinpath("configs").joinpath(f"{name}.yaml").read_text()
    raise UsageError(f"config file not found: {p} (packaged configs: {', '.join(packaged_configs())})")


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A validated TrainConfig from a YAML file or packaged config name (or defaults) plus overrides.

    The data sources the file names (data.train, data.val) are marked as read from it (`StoredSpec`): a
    `pipe:` command in them runs only when `train` is told `allow_pipe`. One given in `overrides` is the
    caller's own, like a spec set in Python."""
    d: Dict[str, Any] = {}
    if path is not None:
        d = parse_yaml(read_config_text(path), str(path)) or {}
        if not isinstance(d, dict):
            raise UsageError(f"{path}: the config must be a mapping of sections")
    cfg = config_from_dict(apply_overrides(d, overrides))
    data = d.get("data") if isinstance(d.get("data"), dict) else {}
    overridden = {str(o).split("=", 1)[0].strip() for o in overrides or ()}
    for key in _SOURCE_KEYS:
        value = getattr(cfg.data, key)
        if f"data.{key}" not in overridden and isinstance(value, str) and value == data.get(key):
            setattr(cfg.data, key, stored_spec(value, path))
    return cfg.validate()


_SOURCE_KEYS = ("train", "val")  # the data-source specs of a config


class _Dumper(yaml.SafeDumper):
    """safe_dump, and a spec read from a file (a `str` marked `StoredSpec`) written as the string it is."""


_Dumper.add_representer(StoredSpec, lambda dumper, value: dumper.represent_str(accept_stored(value, True)))


def dump_config(cfg: TrainConfig) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False)
