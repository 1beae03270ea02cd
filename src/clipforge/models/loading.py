"""`load_model(ref)`: any model reference -> a native `CLIPModel`.

A reference is a registered name (random init, optionally with a `weights` file), a clipforge checkpoint
directory, or one of the converters' references (`convert.RESOLVERS`: `hf:ORG/NAME`, local HF / open_clip
directories, `open_clip:ARCH[/TAG]`, OpenAI-layout state-dict files). `register_resolver` adds more.

Any of these can carry an adapter: `BASE+ADAPTER_DIR` loads BASE and applies the LoRA / Comp-LoRA adapter
saved in ADAPTER_DIR (checked against the base's content hash); an adapter directory alone loads the base its
config names. So every job that takes a model reference (classify, eval, index, serve, export) takes adapters.

`tokenizer` (a tokenizer object, or a tokenizer directory / file) sets a registered or converted model's
tokenizer. An open_clip or OpenAI-layout checkpoint without one, with no tokenizer files beside its weights and
no open_clip installed, is refused: a stand-in tokenizer would make every text's ids wrong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from clipforge.errors import ClipforgeError, UsageError
from clipforge.models.adapter import ADAPTER_CONFIG, attach_adapter, read_adapter_config, split_adapter_ref
from clipforge.models.checkpoint import (PathLike, check_header_shapes, is_checkpoint_dir, load_state_dict_strict,
                                         read_checkpoint_dir, read_config_json, read_safetensors_header,
                                         read_state_dict)
from clipforge.models.clip import CLIPModel
from clipforge.models.model_registry import get_model_config, list_models
from clipforge.models.convert import RESOLVERS, Resolver, refuse_weights
from clipforge.models.factory import build_model, create_model, expected_state_shapes
from clipforge.models.tokenizer import Tokenizer

__all__ = ["load_model", "load_checkpoint_dir", "register_resolver", "resolvers"]

_EXTRA_RESOLVERS: list[Resolver] = []


def register_resolver(resolver: Resolver) -> Resolver:
    """Add a kind of model reference, tried after the built-in ones."""
    _EXTRA_RESOLVERS.append(resolver)
    return resolver


def resolvers() -> list[Resolver]:
    return [*RESOLVERS, *_EXTRA_RESOLVERS]


def load_checkpoint_dir(path: PathLike, device=None) -> CLIPModel:
    cfg, tok, state = read_checkpoint_dir(path, expected_shapes=expected_state_shapes)
    model = build_model(cfg, tokenizer=tok)
    load_state_dict_strict(model, state, f"weights in {path}")
    return model.to(device) if device is not None else model


def load_model(ref: Union[str, PathLike], *, weights: Optional[PathLike] = None, trust_pickle: bool = False,
               device=None, vision_heads: Optional[int] = None, text_heads: Optional[int] = None,
               tokenizer=None, **overrides) -> CLIPModel:
    """Resolve a model reference (see the module docstring). `overrides` apply to registered names only;
    `vision_heads` / `text_heads` to OpenAI-layout state-dict files, whose shapes do not show head counts;
    `tokenizer` to registered names (a Tokenizer or a clipforge tokenizer directory) and converted
    checkpoints (also HF tokenizer files, or OpenAI's merges file for open_clip / OpenAI-layout ones), not to
    clipforge checkpoint directories, which carry their own. The model comes back in eval mode (call
    `.train()` to train it): a BatchNorm tower in train mode would normalise each batch by its own statistics."""
    ref_s = str(ref)
    base, adapter = split_adapter_ref(ref_s)
    if adapter is not None:
        base = base or _stored_base(adapter)
        model = load_model(base, weights=weights, trust_pickle=trust_pickle, vision_heads=vision_heads,
                           text_heads=text_heads, tokenizer=tokenizer, **overrides)
        model = attach_adapter(model, adapter, base_model=base)
        return model.to(device) if device is not None else model
    heads = {k: v for k, v in (("vision_heads", vision_heads), ("text_heads", text_heads)) if v is not None}
    if is_checkpoint_dir(ref_s):
        refuse_weights(ref_s, weights, "a clipforge checkpoint directory")
        _refuse_options(ref_s, heads, overrides, "a clipforge checkpoint directory states its own")
        if tokenizer is not None:
            raise UsageError(f"`tokenizer` does not apply to {ref_s!r}: a clipforge checkpoint directory carries its "
                             "own (replace model.tokenizer after loading to use another)")
        model = load_checkpoint_dir(ref_s)
    elif ref_s in list_models():
        _refuse_options(ref_s, heads, {}, "a registered architecture states its own")
        if isinstance(tokenizer, (str, Path)):
            tokenizer = Tokenizer.load(tokenizer)
        if weights is not None and Path(weights).suffix == ".safetensors" and Path(weights).is_file():
            # shapes against the header before the model is built (a mismatch is found without allocating)
            check_header_shapes(read_safetensors_header(weights), expected_state_shapes(
                get_model_config(ref_s, **overrides)), str(weights))
        model = create_model(ref_s, tokenizer=tokenizer, **overrides)
        if weights is not None:
            load_state_dict_strict(model, read_state_dict(weights, trust_pickle=trust_pickle), str(weights))
    else:
        resolver = next((r for r in resolvers() if r.matches(ref_s)), None)
        if resolver is None:
            if Path(ref_s).is_dir():
                read_config_json(ref_s)  # an unreadable / invalid config.json: say that, not "no config.json"
                hint = ("a directory whose config.json is neither clipforge's nor HF's"
                        if (Path(ref_s) / "config.json").is_file() else "a directory without config.json")
            else:
                hint = "not found"
            raise UsageError(f"cannot load model {ref_s!r}: not a registered name ({', '.join(list_models())}), "
                             f"not a clipforge checkpoint directory ({hint}), and no converter recognises it "
                             "(hf:ORG/NAME, open_clip:ARCH/TAG, or a local HF/OpenAI checkpoint)")
        _refuse_options(ref_s, {k: v for k, v in heads.items() if k not in resolver.options}, overrides,
                        "it states its own")
        extra = dict(heads)
        if tokenizer is not None:
            if "tokenizer" not in resolver.options:
                raise UsageError(f"`tokenizer` does not apply to {ref_s!r}: its {resolver.name} loader takes none")
            extra["tokenizer"] = tokenizer
        model = resolver.load(ref_s, weights=weights, trust_pickle=trust_pickle, **extra)
    model.eval()  # every loaded model in inference mode, as converted ones were: BatchNorm uses its statistics
    return model.to(device) if device is not None else model


def _stored_base(adapter: str) -> str:
    """The base an adapter directory names, which must be a model, not an adapter: adapters do not stack, and
    one naming itself (or another adapter naming it back) would otherwise recurse without end."""
    base = read_adapter_config(adapter)["base_model"]
    if not isinstance(base, str) or not base.strip():
        raise ClipforgeError(f"{adapter}/{ADAPTER_CONFIG}: base_model must be a model reference, got {base!r}")
    if split_adapter_ref(base)[1] is not None:
        same = Path(base).resolve() == Path(adapter).resolve()
        raise ClipforgeError(f"adapter {adapter} names {'itself' if same else f'another adapter ({base})'} as its "
                             "base_model: an adapter's base must be a model (adapters do not stack); give the "
                             "base explicitly as BASE+ADAPTER")
    return base


def _refuse_options(ref: str, heads: dict, overrides: dict, why: str) -> None:
    if heads:
        raise UsageError(f"{' / '.join(f'`{k}`' for k in heads)} apply to OpenAI-layout state-dict files, whose "
                         f"shapes do not show head counts; {ref!r}: {why}")
    if overrides:
        raise UsageError(f"config overrides {sorted(overrides)} apply to registered names only, not {ref!r}")
