"""Export a LoRA / Comp-LoRA adapter in peft's format, for the HF export of its base (`export_model(model, "hf", ...)`).

    export_peft(model_with_adapter, "out/peft")      # adapter_config.json + adapter_model.safetensors
    # in transformers + peft:
    #   base = CLIPModel.from_pretrained("out/hf");  model = PeftModel.from_pretrained(base, "out/peft")

Module names are HF's (`vision_model.encoder.layers.3.self_attn.q_proj`, `mlp.fc1`, `visual_projection`, ...),
listed one by one in `target_modules`. The fused native qkv layer becomes three HF LoRAs that share the same A
and split B's rows per q, k, v: the fused update B A (3W x in) stacks exactly the three updates B_q A, B_k A,
B_v A, so the export is exact (same rank; the three copies of A cost 2 r in more numbers than the fused form).
Comp-LoRA exports its effective factors (B_eff = (I - U U^T) B, A_eff = A (I - V V^T)): peft applies them as
a plain LoRA with the same rank and the same dW. Scaling is peft's lora_alpha / r (no rsLoRA).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import save_file

from clipforge.errors import UsageError
from clipforge.models.convert.common import split_qkv, write_dir_atomically
from clipforge.models.convert.hf import hf_model_type
from clipforge.models.lora import has_lora, lora_modules
from clipforge.models.unwrap import unwrap_model

__all__ = ["export_peft", "hf_module_names"]

_BLOCK = re.compile(r"^(visual|text)\.transformer\.blocks\.(\d+)\.(.+)$")
_IN_BLOCK = {"attn.out": "self_attn.out_proj", "mlp.fc": "mlp.fc1", "mlp.proj": "mlp.fc2"}
_TOWER = {"visual": "vision_model", "text": "text_model"}


def hf_module_names(name: str, siglip: bool) -> list[str]:
    """Native module name -> the HF module name(s) it becomes (three for a fused qkv)."""
    m = _BLOCK.match(name)
    if m:
        tower, i, rel = m.groups()
        prefix = f"{_TOWER[tower]}.encoder.layers.{i}"
        if rel == "attn.qkv":
            return [f"{prefix}.self_attn.{p}_proj" for p in "qkv"]
        if rel in _IN_BLOCK:
            return [f"{prefix}.{_IN_BLOCK[rel]}"]
    if name == "visual.proj" and not siglip:
        return ["visual_projection"]
    if name == "text.proj":
        return ["text_model.head" if siglip else "text_projection"]
    if name in ("visual.head.mlp.fc", "visual.head.mlp.proj") and siglip:
        return [f"vision_model.head.mlp.fc{1 if name.endswith('fc') else 2}"]
    raise UsageError(f"adapted layer {name} has no counterpart in the HF model")


def export_peft(model, out_dir, base_model_name_or_path: str = None, *, overwrite: bool = False) -> Path:
    """Write `model`'s adapter as a peft LoRA directory (HF module names), atomically."""
    model = unwrap_model(model)
    if not has_lora(model):
        raise UsageError("this model carries no adapter to export")
    siglip = hf_model_type(model.config) == "siglip"
    cfg = model.lora_config
    state, targets = {}, []
    for name, mod in sorted(lora_modules(model).items()):
        b, a = (t.detach().float().cpu().contiguous() for t in mod.effective_factors())  # (out, r), (r, in)
        hf_names = hf_module_names(name, siglip)
        parts = split_qkv(b) if len(hf_names) == 3 else (b,)
        for hf_name, b_part in zip(hf_names, parts):
            state[f"base_model.model.{hf_name}.lora_A.weight"] = a.clone()
            state[f"base_model.model.{hf_name}.lora_B.weight"] = b_part.contiguous()
            targets.append(hf_name)
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
              "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "target_modules": targets,
              "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
              "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
              "layers_to_transform": None}

    def write(tmp: Path) -> None:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})

    return write_dir_atomically(Path(out_dir), write, kind="peft-adapter", overwrite=overwrite,
                                recognise=lambda p: (p / "adapter_config.json").is_file()
                                and (p / "adapter_model.safetensors").is_file())
