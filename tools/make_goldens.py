"""Write the reference fixtures under tests/golden/ from the reference implementations themselves.

Runs in the separate reference environment (open_clip needs torchvision, which only imports beside
torch 2.14.1 here; see README Notes and docs/fidelity.md):

    python3 -m venv /work/refenv && /work/refenv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        open_clip_torch clip-benchmark requests transformers scikit-image safetensors
    /work/refenv/bin/python tools/make_goldens.py            # from the repository root

It imports nothing from clipforge: every number comes from open_clip, torchvision, transformers or
CLIP_benchmark, on inputs from tests/golden_inputs.py. The normal suite (tests/test_golden_*.py) compares
clipforge against these files without installing any of them. Rerunning it with the same versions
reproduces the files; the versions are recorded in tests/golden/MANIFEST.json.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden"
sys.path.insert(0, str(ROOT / "tests"))

from golden_inputs import golden_captions, golden_images, image_digest  # noqa: E402

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIZE = 224          # resize-shortest-side + centre-crop configs (the size of the 298-vs-299 bug)
SQUASH_SIZE = 112   # squash configs: no rounding choices, so a smaller output keeps the goldens small


def sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def store_png(arrays: dict, crop: np.ndarray) -> str:
    """Store a uint8 (H, W, 3) crop losslessly as PNG bytes in `arrays`, once per checksum; return its key."""
    key = sha(crop)[:16]
    if key not in arrays:
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, "PNG", optimize=True)
        arrays[key] = np.frombuffer(buf.getvalue(), np.uint8)
    return key


# ------------------------------------------------------------------------------------------- preprocess
def _open_clip_crop(tf, img):
    """open_clip's eval Compose up to (not including) ToTensor: the uint8 RGB crop it normalises."""
    from torchvision.transforms import Normalize, ToTensor

    steps = tf.transforms
    k = next(i for i, t in enumerate(steps) if isinstance(t, ToTensor))
    assert isinstance(steps[k + 1], Normalize) and len(steps) == k + 2
    for t in steps[:k]:
        img = t(img)
    return np.asarray(img, dtype=np.uint8)


def preprocess_goldens():
    import open_clip
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    configs = {
        "open_clip": open_clip.image_transform(SIZE, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD,
                                               resize_mode="shortest", interpolation="bicubic"),
        "open_clip_squash": open_clip.image_transform(SQUASH_SIZE, is_train=False, mean=(0.5,) * 3,
                                                      std=(0.5,) * 3, resize_mode="squash", interpolation="bicubic"),
        "hf_clip": CLIPImageProcessorPil(),      # defaults = openai/clip-vit-base-patch32's preprocessor_config
        # google/siglip-base-patch16-224's defaults at a smaller size
        "hf_siglip": SiglipImageProcessorPil(size={"height": SQUASH_SIZE, "width": SQUASH_SIZE}),
    }
    meta = {"configs": {
        "open_clip": {"size": SIZE, "mean": OPENAI_MEAN, "std": OPENAI_STD, "resize_mode": "shortest",
                      "convention": "open_clip"},
        "open_clip_squash": {"size": SQUASH_SIZE, "mean": (0.5,) * 3, "std": (0.5,) * 3, "resize_mode": "squash",
                             "convention": "open_clip"},
        "hf_clip": {"size": SIZE, "mean": list(configs["hf_clip"].image_mean),
                    "std": list(configs["hf_clip"].image_std), "resize_mode": "shortest", "convention": "hf"},
        "hf_siglip": {"size": SQUASH_SIZE, "mean": list(configs["hf_siglip"].image_mean),
                      "std": list(configs["hf_siglip"].image_std), "resize_mode": "squash", "convention": "hf"},
    }, "images": []}
    arrays = {}  # PNG bytes of each distinct uint8 crop (lossless), keyed by the crop's checksum
    for name, img in golden_images():
        entry = {"name": name, "mode": img.mode, "size": list(img.size), "input_sha256": image_digest(img),
                 "crop": {}, "output_sha256": {}}
        for cname, tf in configs.items():
            if cname.startswith("open_clip"):
                full = tf(img.copy()).numpy()                                     # (3, S, S) float32
                crop = _open_clip_crop(tf, img.copy())
                m, s = (np.asarray(meta["configs"][cname][k], np.float32) for k in ("mean", "std"))
                again = ((crop.astype(np.float32) / np.float32(255)) - m) / s    # ToTensor + Normalize
            else:
                full = tf(images=img.copy(), return_tensors="np")["pixel_values"][0]
                crop = tf(images=img.copy(), do_rescale=False, do_normalize=False,
                          return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
                assert np.array_equal(crop, np.round(crop)) and crop.min() >= 0 and crop.max() <= 255
                crop = crop.astype(np.uint8)
                m, s = (np.asarray(meta["configs"][cname][k], np.float32) for k in ("mean", "std"))
                again = ((crop.astype(np.float64) * tf.rescale_factor).astype(np.float32) - m) / s
            size = meta["configs"][cname]["size"]
            assert full.dtype == np.float32 and full.shape == (3, size, size)
            # The stored uint8 crop reproduces the reference's normalised tensor bit for bit.
            assert np.array_equal(again.transpose(2, 0, 1), full), (name, cname)
            entry["crop"][cname] = store_png(arrays, crop)
            entry["output_sha256"][cname] = sha(full)
        meta["images"].append(entry)
    np.savez_compressed(OUT / "preprocess.npz", **arrays)
    (OUT / "preprocess.json").write_text(json.dumps(meta, indent=1))
    return {"images": len(meta["images"]), "configs": list(configs)}


# -------------------------------------------------------------------------------------------- tokenizer
def tokenizer_goldens():
    import open_clip

    tok = open_clip.get_tokenizer("ViT-B-32")
    captions = golden_captions()
    ids = tok(captions).numpy()                                                   # (N, 77)
    rows = [r[: int(np.flatnonzero(r).max()) + 1].tolist() for r in ids]         # padding (0) trimmed
    payload = {"tokenizer": "open_clip.get_tokenizer('ViT-B-32') (SimpleTokenizer, clean='lower')",
               "context_length": int(ids.shape[1]), "captions": captions, "ids": rows}
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    with open(OUT / "tokenizer_open_clip.json.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(data)  # mtime 0: a rerun writes the same bytes
    shutil.copyfile(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz",
                    OUT / "bpe_simple_vocab_16e6.txt.gz")
    return {"captions": len(captions), "truncated": int(sum(len(r) == ids.shape[1] for r in rows))}


# ----------------------------------------------------------------------------------------------- models
def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # LN at 1 / biases at 0 would hide a swapped tensor
        for n, p in model.named_parameters():
            if "logit" not in n:
                p.add_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim == 1 else 0.02))
    return model.eval()


def _inputs(image_size, context, vocab, eot, n_img=3, seed=0):
    rng = np.random.RandomState(seed)
    pixels = rng.standard_normal((n_img, 3, image_size, image_size)).astype(np.float32)
    ids = np.zeros((4, context), np.int64)
    for i, length in enumerate((1, 4, context - 2, context - 1)):              # tokens before the end token
        ids[i, 0] = eot - 1                                                     # a start token
        ids[i, 1:length + 1] = rng.randint(1, eot - 1, size=length)
        ids[i, length + 1 if length + 1 < context else context - 1] = eot
    return pixels, ids


OPEN_CLIP_CONFIGS = {
    # quick_gelu, 3 heads of 16, mlp 2.5x / 3x, 40 px in 8 px patches, 20 positions, argmax pooling
    "oc_quickgelu": {"embed_dim": 24, "quick_gelu": True,
                     "vision_cfg": {"image_size": 40, "layers": 2, "width": 48, "head_width": 16, "mlp_ratio": 2.5,
                                    "patch_size": 8},
                     "text_cfg": {"context_length": 20, "vocab_size": 530, "width": 40, "heads": 5, "layers": 2,
                                  "mlp_ratio": 3.0}},
    # gelu, no ln_pre, bidirectional text pooled at the last position through a biased projection, logit bias
    "oc_gelu_last": {"embed_dim": 36, "quick_gelu": False, "init_logit_bias": -5.0,
                     "vision_cfg": {"image_size": 36, "layers": 3, "width": 36, "head_width": 12, "patch_size": 6,
                                    "no_ln_pre": True},
                     "text_cfg": {"context_length": 13, "vocab_size": 530, "width": 24, "heads": 2, "layers": 1,
                                  "pool_type": "last", "no_causal_mask": True, "proj_bias": True}},
}


def model_goldens():
    import open_clip
    import transformers
    from safetensors.torch import save_file

    outputs = {}
    mdir = OUT / "models"
    shutil.rmtree(mdir, ignore_errors=True)
    for i, (name, mc) in enumerate(OPEN_CLIP_CONFIGS.items()):
        d = mdir / name
        d.mkdir(parents=True)
        pre = {"size": mc["vision_cfg"]["image_size"], "mean": OPENAI_MEAN, "std": OPENAI_STD,
               "interpolation": "bicubic", "resize_mode": "shortest"}
        (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": mc, "preprocess_cfg": pre}, indent=1))
        torch.manual_seed(i)
        model = _randomise(open_clip.create_model(f"local-dir:{d}", pretrained=None), seed=10 + i)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
        tc = mc["text_cfg"]
        pixels, ids = _inputs(mc["vision_cfg"]["image_size"], tc["context_length"], tc["vocab_size"],
                              tc["vocab_size"] - 1, seed=i)
        with torch.no_grad():
            img = model.encode_image(torch.from_numpy(pixels), normalize=True)
            txt = model.encode_text(torch.from_numpy(ids), normalize=True)
            logits = model.logit_scale.exp() * img @ txt.T
            if getattr(model, "logit_bias", None) is not None:
                logits = logits + model.logit_bias
        outputs.update({f"{name}/pixels": pixels, f"{name}/ids": ids, f"{name}/image_embeds": img.numpy(),
                        f"{name}/text_embeds": txt.numpy(), f"{name}/logits": logits.numpy()})

    hf_cfgs = {
        "hf_clip": transformers.CLIPConfig(
            text_config=dict(vocab_size=530, hidden_size=40, intermediate_size=70, num_hidden_layers=2,
                             num_attention_heads=5, max_position_embeddings=20, hidden_act="gelu",
                             bos_token_id=528, eos_token_id=529, pad_token_id=0),
            vision_config=dict(hidden_size=48, intermediate_size=100, num_hidden_layers=2, num_attention_heads=3,
                               image_size=40, patch_size=8, hidden_act="gelu"),
            projection_dim=24),
        "hf_siglip": transformers.SiglipConfig(
            text_config=dict(vocab_size=530, hidden_size=48, intermediate_size=90, num_hidden_layers=2,
                             num_attention_heads=3, max_position_embeddings=13, bos_token_id=528, eos_token_id=529,
                             pad_token_id=0),
            vision_config=dict(hidden_size=48, intermediate_size=90, num_hidden_layers=2, num_attention_heads=3,
                               image_size=36, patch_size=6)),
    }
    for i, (name, cfg) in enumerate(hf_cfgs.items()):
        torch.manual_seed(100 + i)
        cls = transformers.CLIPModel if name == "hf_clip" else transformers.SiglipModel
        model = _randomise(cls(cfg), seed=200 + i)
        model.save_pretrained(mdir / name)
        ctx = cfg.text_config.max_position_embeddings
        pixels, ids = _inputs(cfg.vision_config.image_size, ctx, 530, 529, seed=10 + i)
        with torch.no_grad():
            o = model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels))
        outputs.update({f"{name}/pixels": pixels, f"{name}/ids": ids, f"{name}/image_embeds": o.image_embeds.numpy(),
                        f"{name}/text_embeds": o.text_embeds.numpy(), f"{name}/logits": o.logits_per_image.numpy()})
    np.savez_compressed(OUT / "model_outputs.npz", **outputs)
    return {"models": list(OPEN_CLIP_CONFIGS) + list(hf_cfgs)}


# ---------------------------------------------------------------------------------------------- metrics
def _cb_accuracy(accuracy, logits, target):
    """CLIP_benchmark's `accuracy(logits, target, topk=(1, 5))`. Version 1.6.2 ends in float() of a
    one-element array, which numpy >= 2.4 refuses; then its own top-k expression is evaluated verbatim."""
    try:
        return accuracy(logits, target, topk=(1, 5))
    except TypeError:
        pred = logits.topk(5, 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        n = len(target)
        return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().numpy()[0]) / n for k in (1, 5)]


def metric_goldens():
    from clip_benchmark.metrics.zeroshot_classification import accuracy
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.RandomState(5)
    arrays, results = {}, {}
    # Zero-shot classification: 10 classes; the "ties" set duplicates two class embeddings exactly.
    for case, dup in (("no_ties", False), ("ties", True)):
        cls = rng.standard_normal((10, 16)).astype(np.float32)
        if dup:
            cls[7], cls[9] = cls[2], cls[4]
        target = rng.randint(0, 10, 500)
        feats = (cls[target] + 1.5 * rng.standard_normal((500, 16))).astype(np.float32)
        logits = torch.from_numpy(feats) @ torch.from_numpy(cls).T               # (500, 10)
        t = torch.from_numpy(target)
        top1, top5 = _cb_accuracy(accuracy, logits, t)
        pred = logits.argmax(axis=1)
        results[f"zeroshot_{case}"] = {"top1_topk_path": top1, "top5_topk_path": top5,
                                       "top1_argmax": float((pred == t).float().mean()),
                                       "mean_per_class_recall": float(balanced_accuracy_score(target, pred.numpy()))}
        arrays[f"zeroshot_{case}/logits"], arrays[f"zeroshot_{case}/target"] = logits.numpy(), target
    # Retrieval: 60 images x 5 captions; the "ties" set repeats some image embeddings exactly.
    for case, dup in (("no_ties", False), ("ties", True)):
        imgs = rng.standard_normal((60, 16)).astype(np.float32)
        if dup:
            imgs[10:20] = imgs[0:10]
        t2i = np.repeat(np.arange(60), 5)
        txts = (imgs[t2i] + 2.0 * rng.standard_normal((300, 16))).astype(np.float32)
        scores = torch.from_numpy(txts) @ torch.from_numpy(imgs).T               # (texts, images), as CLIP_benchmark
        positive = torch.zeros_like(scores, dtype=torch.bool)
        positive[torch.arange(300), torch.from_numpy(t2i)] = True
        res = {}
        for k in (1, 5, 10):
            res[f"image_retrieval_recall@{k}"] = (batchify(recall_at_k, scores, positive, 64, "cpu", k=k) > 0).float().mean().item()
            res[f"text_retrieval_recall@{k}"] = (batchify(recall_at_k, scores.T, positive.T, 64, "cpu", k=k) > 0).float().mean().item()
        results[f"retrieval_{case}"] = res
        arrays[f"retrieval_{case}/images"], arrays[f"retrieval_{case}/texts"] = imgs, txts
        arrays[f"retrieval_{case}/text_to_image"] = t2i
    np.savez_compressed(OUT / "metrics.npz", **arrays)
    (OUT / "metrics.json").write_text(json.dumps(results, indent=1))
    return results


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reductions
    summary = {"preprocess": preprocess_goldens(), "tokenizer": tokenizer_goldens(), "models": model_goldens(),
               "metrics": metric_goldens()}
    pkgs = ("open_clip_torch", "clip-benchmark", "transformers", "torch", "torchvision", "pillow", "ftfy", "regex",
            "scikit-image", "scikit-learn", "numpy", "tokenizers")
    manifest = {"generator": "python tools/make_goldens.py (reference environment, see docs/fidelity.md)",
                "python": sys.version.split()[0], "versions": {p: version(p) for p in pkgs}, "summary": summary}
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
