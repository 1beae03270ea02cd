"""Export a native model to another ecosystem's format (one entry point for the CLI and Python)."""
from __future__ import annotations

from pathlib import Path

from clipforge.errors import UsageError
from clipforge.models.config_checks import own_projection
from clipforge.models.adapter import merged_model
from clipforge.models.checkpoint import load_state_dict_strict
from clipforge.models.factory import build_model
from clipforge.models.lora import has_lora, lora_state_dict
from clipforge.models.unwrap import unwrap_model
from clipforge.models.convert.hf import export_hf
from clipforge.models.convert.open_clip import export_open_clip

FORMATS = ("hf", "open_clip")


def export_model(model, to: str, out_dir, *, overwrite: bool = False) -> Path:
    """Write `model` as an HF (`transformers` CLIPModel/SiglipModel) or open_clip directory at `out_dir`. A model
    carrying an adapter is exported with the adapter merged into its weights (the model itself is unchanged).
    `out_dir` may be new, empty or an earlier export of the same format; anything else needs `overwrite`."""
    if has_lora(model):
        model = merged_model(model)
    cfg = model.config
    if to in FORMATS and (not own_projection(cfg.vision) or not own_projection(cfg.text)):
        image = {"timm": f"a timm image tower ({getattr(cfg.vision, 'model', '')})"}.get(
            cfg.vision.arch, "an EfficientNet image tower")
        towers = [w for w, t in ((image, cfg.vision), ("a Hugging Face text tower", cfg.text)) if not own_projection(t)]
        raise UsageError(f"this model has {' and '.join(towers)} with a projection head: neither transformers' "
                         "CLIPModel nor open_clip's CLIP holds such towers, so it cannot be written as "
                         f"{to!r}; save it as a clipforge checkpoint (model.save_pretrained(DIR), or a training "
                         "run's final/), which every clipforge job loads (docs/pretrained.md)")
    if to == "hf":
        return export_hf(model, out_dir, overwrite=overwrite)
    if to == "open_clip":
        return export_open_clip(model, out_dir, overwrite=overwrite)
    raise UsageError(f"unknown export format {to!r}; valid: {', '.join(FORMATS)}")


def export_hf_base(model, out_dir, *, overwrite: bool = False) -> Path:
    """Write the base of an adapted model (its weights without the adapter) as an HF directory: the model a
    peft adapter exported by `peft_export.export_peft` loads onto."""
    model = unwrap_model(model)
    base = build_model(model.config, tokenizer=model.tokenizer)
    adapter_keys = set(lora_state_dict(model))
    load_state_dict_strict(base, {k: v for k, v in model.state_dict().items() if k not in adapter_keys},
                           "base weights")
    return export_hf(base, out_dir, overwrite=overwrite)
