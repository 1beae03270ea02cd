"""Shared fixtures: one tiny registered config serves every unit test."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_model():
    from clipforge.models import create_model

    return create_model("tiny").eval()


@pytest.fixture
def rgb_image():
    """A deterministic 48x40 RGB PIL image with structure (gradient + a bright square)."""
    import numpy as np
    from PIL import Image

    h, w = 40, 48
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 5 % 256, y * 6 % 256, (x + y) * 3 % 256], -1).astype("uint8")
    arr[10:20, 14:30] = 250
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def digits_demo(tmp_path_factory):
    """The digits demo dataset (built once per session, a few seconds)."""
    from clipforge.data.demo import build_digits

    return build_digits(str(tmp_path_factory.mktemp("demo") / "digits"))


@pytest.fixture(scope="session")
def photos_demo(tmp_path_factory):
    from clipforge.data.demo import build_photos

    return build_photos(str(tmp_path_factory.mktemp("demo") / "photos"))


@pytest.fixture(scope="session")
def photos_index(photos_demo, tmp_path_factory):
    """An index of the photos demo with the random-init tiny model (read-only: tests must not change it)."""
    from clipforge.retrieval.build import build_index

    out = tmp_path_factory.mktemp("photos_index") / "idx"
    build_index(f"files:{photos_demo['images_dir']}", "tiny", out, batch_size=8, progress=False)
    return out
