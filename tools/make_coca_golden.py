"""Write tests/golden/coca/: an open_clip CoCa with random weights, and what open_clip computes with it.

Runs in the reference environment (open_clip_torch, transformers for `generate`), from the repository root:

    /work/refenv/bin/python tools/make_coca_golden.py

It imports nothing from clipforge. A small custom CoCa (vision width 48 != embed_dim 32, so the attentional
pooler holds separate q/k/v projections as in coca_ViT-B-32; 2 layers per tower; 514 token ids, the size of
clipforge's byte-level tokenizer) is built with open_clip's own `CoCa` class and saved as an open_clip
directory (open_clip_config.json + open_clip_model.safetensors, ~0.5 MB) beside `outputs.npz`: the inputs
(images, token ids with padding), `model(image, text)`'s image/text features, caption logits and labels, the
unnormalised embeddings and image tokens, and greedy generation (`generate(generation_type="top_k",
top_k=1)`). tests/test_coca_golden.py loads the directory through clipforge and compares.
"""
from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

# transformers 5 dropped BeamSearchScorer, and open_clip 3.3 then disables all of `generate` (its import block
# fails as a whole). The top-k path used here never touches it: a placeholder lets open_clip import the rest.
if not hasattr(transformers, "BeamSearchScorer"):
    transformers.BeamSearchScorer = None
from open_clip.coca_model import CoCa  # noqa: E402  (after the placeholder)

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "coca"
SOT, EOT, PAD = 512, 513, 0
MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "patch_size": 8, "head_width": 24,
                   "attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 9, "output_tokens": True},
    "text_cfg": {"context_length": 12, "vocab_size": 514, "width": 32, "heads": 2, "layers": 2, "embed_cls": True,
                 "output_tokens": True},
    "multimodal_cfg": {"context_length": 12, "vocab_size": 514, "width": 32, "heads": 2, "layers": 2,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}


def main() -> None:
    torch.manual_seed(0)
    model = CoCa(MODEL_CFG["embed_dim"], MODEL_CFG["multimodal_cfg"], MODEL_CFG["text_cfg"],
                 MODEL_CFG["vision_cfg"]).eval()
    with torch.no_grad():
        # open_clip's CoCa leaves the decoder's vocabulary projection as torch.empty (its init_parameters is
        # never called): initialise it as MultimodalTransformer.init_parameters would; and move biases and
        # LayerNorms off their 0 / 1 init so that every tensor's mapping is exercised
        torch.nn.init.normal_(model.text_decoder.text_projection, std=model.text_decoder.width ** -0.5)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    images = torch.randn(3, 3, 32, 32)
    rows = [[SOT, 70, 71, 72, EOT], [SOT, 100, 5, 6, 7, 8, 9, 10, 11, EOT], [SOT, 300, EOT]]
    ids = torch.full((3, 12), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    with torch.no_grad():
        out = model(images, ids)
        img_raw, img_tokens = model._encode_image(images, normalize=False)
        txt_raw, _ = model._encode_text(ids, normalize=False)
        gen = model.generate(images, generation_type="top_k", top_k=1, seq_len=10, min_seq_len=3,
                             sot_token_id=SOT, eos_token_id=EOT, pad_token_id=PAD)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": {}}, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(OUT / "open_clip_model.safetensors"))
    np.savez_compressed(
        OUT / "outputs.npz", images=images.numpy(), ids=ids.numpy(),
        image_features=out["image_features"].numpy(), text_features=out["text_features"].numpy(),
        logits=out["logits"].numpy(), labels=out["labels"].numpy(), image_raw=img_raw.numpy(),
        text_raw=txt_raw.numpy(), image_tokens=img_tokens.numpy(), generated=gen.numpy(),
        logit_scale=out["logit_scale"].numpy())
    (OUT / "MANIFEST.json").write_text(json.dumps({
        "generator": "/work/refenv/bin/python tools/make_coca_golden.py",
        "versions": {p: version(p) for p in ("open_clip_torch", "torch", "transformers")},
        "generate": {"generation_type": "top_k", "top_k": 1, "seq_len": 10, "min_seq_len": 3,
                     "sot": SOT, "eos": EOT, "pad": PAD}}, indent=2))
    print("wrote", OUT, sum(f.stat().st_size for f in OUT.iterdir()), "bytes; generated", gen.tolist())


if __name__ == "__main__":
    main()
