"""Write tests/golden/preprocess_hf_torchvision.{json,npz}: what transformers' DEFAULT image processors (the
torchvision backend of `CLIPImageProcessor()` / `SiglipImageProcessor()` in transformers 5.x) make of the golden
images (issue 31, items 5-6).

Runs in the reference environment and imports nothing from clipforge:

    /work/refenv/bin/python tools/make_hf_torchvision_goldens.py            # from the repository root

Per image and config: the uint8 crop the processor normalises (stored losslessly as PNG, deduplicated by
checksum) and the normalised output's checksum.
"""
from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tests"))

sys.path.insert(0, str(ROOT / "tools"))

from golden_inputs import golden_images, image_digest  # noqa: E402
from make_goldens import sha, store_png  # noqa: E402

SIZE = SQUASH_SIZE = 112  # the default processors at a smaller size: the same code path, a quarter of the bytes


def main() -> int:
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    torch.set_num_threads(1)
    procs = {
        "hf_clip": CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}),
        "hf_siglip": SiglipImageProcessor(size={"height": SQUASH_SIZE, "width": SQUASH_SIZE}),
    }
    for p in procs.values():
        assert p.backend == "torchvision", p.backend
    meta = {"generator": "tools/make_hf_torchvision_goldens.py (reference environment; imports nothing from "
                         "clipforge)",
            "versions": {k: version(k) for k in ("transformers", "torch", "torchvision", "pillow", "numpy")},
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "configs": {
                "hf_clip": {"size": SIZE, "mean": list(procs["hf_clip"].image_mean),
                            "std": list(procs["hf_clip"].image_std), "resize_mode": "shortest",
                            "interpolation": "bicubic"},
                "hf_siglip": {"size": SQUASH_SIZE, "mean": list(procs["hf_siglip"].image_mean),
                              "std": list(procs["hf_siglip"].image_std), "resize_mode": "squash",
                              "interpolation": "bicubic"}},
            "images": []}
    arrays = {}
    for name, img in golden_images():
        entry = {"name": name, "input_sha256": image_digest(img), "crop": {}, "output_sha256": {}}
        for cname, proc in procs.items():
            full = proc(images=img.copy(), return_tensors="pt")["pixel_values"][0].numpy()
            crop = proc(images=img.copy(), do_rescale=False, do_normalize=False,
                        return_tensors="pt")["pixel_values"][0].numpy()
            assert crop.dtype == np.uint8, crop.dtype
            crop = crop.transpose(1, 2, 0)
            entry["crop"][cname] = store_png(arrays, crop)
            entry["output_sha256"][cname] = sha(full.astype(np.float32))
        meta["images"].append(entry)
    np.savez_compressed(OUT / "preprocess_hf_torchvision.npz", **arrays)
    (OUT / "preprocess_hf_torchvision.json").write_text(json.dumps(meta, indent=1))
    print(f"{len(meta['images'])} images, {len(arrays)} arrays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
