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
