"""`clipforge index` / `clipforge search` CLIs, and the acceptance test: a tiny model trained here on the photos
demo captions, an index of the photos, and queries written for each photo that must rank it first."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.cli import main

# Queries written for the photos (not copies of their captions); each must rank its photo first.
QUERIES = {
    "an astronaut": "astronaut.png", "a cat": "chelsea.png", "a cup of coffee": "coffee.png",
    "a rocket": "rocket.png", "a horse": "horse.png", "coins": "coins.png", "the moon": "moon.png",
    "a clock": "clock.png", "a brick wall": "brick.png", "grass": "grass.png", "a retina": "retina.png",
    "a motorcycle": "motorcycle.png", "a checkerboard": "checkerboard.png", "a color wheel": "colorwheel.png",
    "gravel": "gravel.png", "galaxies": "hubble_deep_field.png",
}


def _train_photos_model(images_dir: str, out: str, steps: int = 200) -> str:
    """Contrastive training of the tiny model on the 22 photos x 4 captions (warmup + cosine, as the trainer)."""
    from clipforge.data import open_source
    from clipforge.losses import get_loss
    from clipforge.models import create_model, train_tokenizer

    src = open_source(f"files:{images_dir}")
    samples = [src[i] for i in range(len(src))]
    tok = train_tokenizer([c for s in samples for c in s.captions], 768, context_length=32)
    torch.manual_seed(0)
    model = create_model("tiny", tokenizer=tok, text={"vocab_size": 768}, preprocess={"per_image_norm": True})
    images = [s.load_image() for s in samples]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6)
    loss_fn, rng = get_loss("clip"), np.random.default_rng(0)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, and far faster on a busy machine
    try:
        _steps(model, opt, loss_fn, rng, samples, images, steps)
    finally:
        torch.set_num_threads(threads)
    model.eval().save_pretrained(out)
    return out


def _steps(model, opt, loss_fn, rng, samples, images, steps):
    from clipforge.losses import clamp_logit_scale_

    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 10) * 0.5 * (1 + math.cos(math.pi * step / steps))
        pixels = torch.stack([model.preprocess_train(im) for im in images])  # (22, 3, 32, 32)
        caps = [s.captions[rng.integers(len(s.captions))] for s in samples]
        loss = loss_fn(model(pixels, model.tokenizer(caps)), {}).total
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        clamp_logit_scale_(model)


@pytest.mark.slow
def test_acceptance_trained_model_finds_each_photo_first(photos_demo, tmp_path, capsys):
    model_dir = _train_photos_model(photos_demo["images_dir"], str(tmp_path / "model"))
    idx = str(tmp_path / "idx")
    assert main(["index", "build", f"files:{photos_demo['images_dir']}", "--model", model_dir, "--out", idx,
                 "--workers", "0", "--batch-size", "8"]) == 0
    assert "22 items" in capsys.readouterr().out
    misses = []
    for query, want in QUERIES.items():
        assert main(["search", idx, query, "-k", "3", "--json"]) == 0
        hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        if hits[0]["key"] != want:
            misses.append((query, [h["key"] for h in hits]))
    assert not misses, misses
    # an image query of a photo finds that photo; the contact sheet is written
    sheet = tmp_path / "sheet.png"
    assert main(["search", idx, "--image", os.path.join(photos_demo["images_dir"], "moon.png"), "-k", "4",
                 "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "moon.png" in out[0] and Image.open(sheet).size[0] > 100


@pytest.fixture(scope="module")
def idx(photos_demo, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "idx")
    assert main(["index", "build", f"files:{photos_demo['images_dir']}", "--model", "tiny", "--out", out,
                 "--workers", "0", "--shard-size", "10"]) == 0
    return out


def test_search_text_output_pages_and_filters(idx, capsys):
    capsys.readouterr()
    assert main(["search", idx, "a photo", "-k", "6", "--json"]) == 0
    full = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["rank"] for h in full] == list(range(6))
    scores = [h["score"] for h in full]
    assert scores == sorted(scores, reverse=True)
    assert main(["search", idx, "a photo", "-k", "3", "--offset", "3", "--json"]) == 0
    page2 = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["id"] for h in page2] == [h["id"] for h in full[3:6]]
    assert main(["search", idx, "a photo", "--filter", "caption*=cat", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits and all("cat" in h["caption"].lower() for h in hits)
    assert main(["search", idx, "a photo", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and ".png" in lines[0]


def test_weighted_query_and_like(idx, capsys):
    capsys.readouterr()
    assert main(["search", idx, '"a cat" + 0.5*"grass" - "moon"', "-k", "1", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["search", idx, "--like", "3", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == 3


def test_index_info_update_and_errors(idx, capsys):
    capsys.readouterr()
    assert main(["index", "info", idx, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["store"]["live"] == 22 and info["index"]["kind"] == "flat" and info["model"] == "tiny"
    assert main(["index", "info", idx]) == 0
    assert "22 items" in capsys.readouterr().out
    assert main(["index", "update", idx]) == 0
    assert "embedded 0" in capsys.readouterr().out
    assert main(["search", idx]) == 2  # no query
    assert "give a query" in capsys.readouterr().err
    assert main(["search", idx, '"unterminated']) == 2
    assert main(["search", str(idx) + "-missing", "cat"]) == 1
