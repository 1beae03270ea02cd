import numpy as np
import torch
from PIL import Image

from clipforge.models import create_model
from clipforge.models.config import PreprocessConfig
from clipforge.models.transforms import EvalTransform, TrainTransform


def test_eval_transform_normalises_constant_image():
    cfg = PreprocessConfig()
    img = Image.new("RGB", (50, 30), (255, 0, 128))
    x = EvalTransform(16, cfg)(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expect = (np.array([255, 0, 128]) / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)
    torch.testing.assert_close(x.mean(dim=(1, 2)), torch.tensor(expect, dtype=torch.float32), atol=1e-3, rtol=0)


def test_eval_centre_crop_keeps_centre():
    # a wide image: left third red, middle third green, right third blue -> centre crop is all green
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30, 0] = 255
    arr[:, 30:60, 1] = 255
    arr[:, 60:, 2] = 255
    cfg = PreprocessConfig(mean=(0, 0, 0), std=(1, 1, 1))
    x = EvalTransform(30, cfg)(Image.fromarray(arr))
    assert x[1].mean() > 0.99 and x[0].mean() < 0.01 and x[2].mean() < 0.01
    squash = EvalTransform(30, PreprocessConfig(mean=(0, 0, 0), std=(1, 1, 1), resize_mode="squash"))
    y = squash(Image.fromarray(arr))
    assert y[0].mean() > 0.25 and y[2].mean() > 0.25  # squash keeps the whole width


def test_train_transform_random_but_seeded(rgb_image):
    t = TrainTransform(24, PreprocessConfig(crop_scale=(0.3, 0.6), hflip=True))
    torch.manual_seed(1)
    a = t(rgb_image)
    torch.manual_seed(1)
    b = t(rgb_image)
    c = t(rgb_image)
    assert a.shape == (3, 24, 24) and torch.equal(a, b) and not torch.equal(b, c)


def test_model_carries_its_preprocessing(rgb_image):
    m = create_model("tiny")
    assert m.preprocess(rgb_image).shape == (3, 32, 32)
    assert m.preprocess_train(rgb_image).shape == (3, 32, 32)
    import pickle

    pickle.dumps(m.preprocess)  # DataLoader workers need picklable transforms


def test_resized_long_side_is_truncated_like_torchvision_and_hf():
    """Issue #11: 640x480, 500x375 and 375x500 photos resize to 298 (int), not 299 (round), at 224."""
    from clipforge.models.transforms import resized_size

    assert resized_size(640, 480, 224) == (298, 224)
    assert resized_size(500, 375, 224) == (298, 224)
    assert resized_size(375, 500, 224) == (224, 298)
    for w, h in [(640, 480), (500, 375), (333, 500), (1000, 37), (224, 224), (225, 224)]:
        nw, nh = resized_size(w, h, 224)
        short, long = sorted((w, h))
        assert min(nw, nh) == 224 and max(nw, nh) == int(224 * long / short)


def test_crop_offset_conventions():
    from clipforge.models.transforms import crop_offset

    # margin 75 (299 -> 224): torchvision's round(37.5) is 38 (half to even), transformers floors to 37
    assert (crop_offset(299, 224, "open_clip"), crop_offset(299, 224, "hf")) == (38, 37)
    assert (crop_offset(297, 224, "open_clip"), crop_offset(297, 224, "hf")) == (36, 36)  # round(36.5) = 36
    for extent in range(224, 260):
        a, b = crop_offset(extent, 224, "open_clip"), crop_offset(extent, 224, "hf")
        assert 0 <= b <= a <= b + 1 and a + 224 <= extent


def test_convention_decides_rgb_conversion_of_transparent_images():
    """hf composites transparency on white before resizing; open_clip resizes RGBA (premultiplied) and drops
    alpha after the crop: a fully transparent red image is white for hf, black (premultiplied) for open_clip."""
    img = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    zero = dict(mean=(0, 0, 0), std=(1, 1, 1))
    hf = EvalTransform(16, PreprocessConfig(**zero, convention="hf"))(img)
    oc = EvalTransform(16, PreprocessConfig(**zero, convention="open_clip"))(img)
    assert torch.allclose(hf, torch.ones_like(hf))
    assert torch.allclose(oc, torch.zeros_like(oc))
    import pytest

    from clipforge.errors import UsageError

    with pytest.raises(UsageError, match="convention"):
        EvalTransform(16, PreprocessConfig(convention="timm"))
