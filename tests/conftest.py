"""Shared fixtures and stand-ins: one tiny registered config serves every unit test."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from clipforge.models import create_model
from clipforge.models.output import CLIPOutput


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_model():
    return create_model("tiny").eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`tiny_checkpoint(seed)` -> the directory of a randomly initialised tiny model saved with that seed
    (written once per seed per session)."""
    made: dict[int, str] = {}

    def make(seed: int = 0) -> str:
        if seed not in made:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                d = tmp_path_factory.mktemp(f"ckpt-{seed}") / "tiny"
                create_model("tiny").save_pretrained(d)
            made[seed] = str(d)
        return made[seed]

    return make


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint, request):
    """A saved tiny model; a test module picks its weights with `CKPT_SEED = n` (default 0)."""
    return tiny_checkpoint(getattr(request.module, "CKPT_SEED", 0))


@pytest.fixture
def rgb_image():
    """A deterministic 48x40 RGB PIL image with structure (gradient + a bright square)."""
    h, w = 40, 48
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 5 % 256, y * 6 % 256, (x + y) * 3 % 256], -1).astype("uint8")
    arr[10:20, 14:30] = 250
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def digits_demo(tmp_path_factory):
    """The digits demo dataset (built once per session, a few seconds)."""
    from clipforge.data.demo_sets import build_digits

    return build_digits(str(tmp_path_factory.mktemp("demo") / "digits"))


@pytest.fixture(scope="session")
def tiny_resnet_checkpoint(digits_demo, tmp_path_factory):
    """A saved tiny-resnet (the demo's BatchNorm tower) whose BatchNorm running statistics are the digits'
    (cumulative averages over 256 training images; weights random, seed 0). A fresh tower's default statistics
    (mean 0, variance 1) make every image's embedding the same in eval mode, which would hide BatchNorm's
    effects from any test of it."""
    from clipforge.data.sources import open_source

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("tiny-resnet")
    source = open_source(f"jsonl:{digits_demo['train_manifest']}")
    pixels = torch.stack([model.preprocess(source[i].load_image()) for i in range(256)])
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.momentum = None  # cumulative average
    with torch.no_grad():
        for i in range(0, len(pixels), 64):
            model.train().encode_image(pixels[i:i + 64])
    for m in norms:
        m.momentum = 0.1
    path = tmp_path_factory.mktemp("ckpt-resnet") / "tiny-resnet"
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def photos_demo(tmp_path_factory):
    from clipforge.data.demo_sets import build_photos

    return build_photos(str(tmp_path_factory.mktemp("demo") / "photos"))


class StandInTwoTower(nn.Module):
    """A small stand-in with the model contract (encode_image / encode_text / forward -> CLIPOutput, a
    log-space `logit_scale`, an optional `logit_bias`), with optional dropout in both towers. Inputs:
    pixels (B, 3, 2, 2) and token ids (B, T) below 20."""

    def __init__(self, dim: int = 8, hidden: int = 16, dropout: float = 0.0, logit_scale: float = math.log(10.0),
                 logit_bias: float | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.img = nn.Sequential(nn.Flatten(), nn.Linear(12, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.tok = nn.Embedding(20, 16)
        self.txt = nn.Sequential(nn.Dropout(dropout), nn.Linear(16, dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias))) if logit_bias is not None else None

    def encode_image(self, pixels, normalize=True):
        x = self.img(pixels)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens, normalize=True):
        x = self.txt(self.tok(tokens).mean(1))
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, pixels, tokens):
        return CLIPOutput(self.encode_image(pixels), self.encode_text(tokens), self.logit_scale.exp(),
                          self.logit_bias)


class FakeTextEncoder:
    """Deterministic stand-in text encoder: normalised bag of random word vectors seeded by the word."""

    def __init__(self, dim=32):
        self.dim = dim
        self.calls = []  # batch sizes seen

    def word(self, w):
        return np.random.default_rng(zlib.crc32(w.encode())).normal(size=self.dim)

    def __call__(self, texts):
        self.calls.append(len(texts))
        vecs = [sum(self.word(w) for w in t.lower().strip(".").split()) for t in texts]
        return F.normalize(torch.tensor(np.stack(vecs), dtype=torch.float32), dim=-1)
@pytest.fixture(scope="session")
def photos_index(photos_demo, tmp_path_factory):
    """An index of the photos demo with the random-init tiny model (read-only: tests must not change it)."""
    from clipforge.retrieval.build import build_index

    out = tmp_path_factory.mktemp("photos_index") / "idx"
    build_index(f"files:{photos_demo['images_dir']}", "tiny", out, batch_size=8, progress=False)
    return out


@pytest.fixture
def writable_photos_index(photos_index, photos_demo, tmp_path):
    """A private copy of `photos_index` whose source is a private copy of the photos folder: tests may delete
    items, add files and run updates."""
    import json
    import shutil

    src = tmp_path / "images"
    shutil.copytree(photos_demo["images_dir"], src)
    out = tmp_path / "idx"
    shutil.copytree(photos_index, out)
    info = json.loads((out / "index.json").read_text())
    info["source"] = f"files:{src}"
    (out / "index.json").write_text(json.dumps(info))
    return out
