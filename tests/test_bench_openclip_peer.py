"""bench/openclip_peer_prepare.py: the open_clip peer of the digits benchmark must see what clipforge's run saw —
the same batches (images and the caption picked for each), the same token ids and prompts — so its schedule is
checked against clipforge's own loader and its arrays against the sources and the run's tokenizer."""
import importlib.util
import warnings
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clipforge.data import make_pair_loader, open_source
from clipforge.models import create_model
from clipforge.models.tokenizer import default_tokenizer
from clipforge.train.config import apply_overrides, config_from_dict, read_config_text
from clipforge.zeroshot.templates import fill, get_templates

_PATH = Path(__file__).resolve().parent.parent / "bench" / "openclip_peer_prepare.py"
_spec = importlib.util.spec_from_file_location("openclip_peer_prepare", _PATH)
peer_prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer_prep)


def _nothing(img):
    return torch.zeros(1)


def test_replayed_schedule_is_clipforges_loader(digits_demo):
    src = open_source(f"jsonl:{digits_demo['train_manifest']}")
    B, seed = 100, 3
    per_epoch = len(src) // B
    steps = per_epoch + 2  # across an epoch boundary
    counts = [len(src[i].captions) for i in range(len(src))]
    images, choice = peer_prep.replay_schedule(counts, B, seed, steps)
    got = []
    for epoch in (0, 1):
        loader = make_pair_loader(src, _nothing, lambda texts: torch.zeros(len(texts), 1), B, seed=seed, epoch=epoch)
        got += list(islice(loader, per_epoch if epoch == 0 else 2))
    assert len(got) == steps
    for s, batch in enumerate(got):
        assert batch["indices"].tolist() == images[s].tolist()
        assert batch["captions"] == [src[int(i)].captions[c] for i, c in zip(images[s], choice[s])]


@pytest.fixture(scope="module")
def prepared(digits_demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("peer")
    tok = default_tokenizer(32)
    create_model("tiny-resnet", tokenizer=tok).save_pretrained(root / "final")
    sets = [f"data.train=jsonl:{digits_demo['train_manifest']}", f"data.val=imagefolder:{digits_demo['val_dir']}",
            f"data.val_classnames={digits_demo['classnames']}", f"data.val_templates={digits_demo['templates_unseen']}",
            "run.steps=13", "run.eval_every=5", "run.threads=1"]
    cfg = config_from_dict(apply_overrides(yaml.safe_load(read_config_text("demo-digits")), sets)).validate()
    with warnings.catch_warnings():  # the byte-level stand-in tokenizer truncates long captions
        warnings.simplefilter("ignore")
        peer = peer_prep.prepare(cfg, root / "final", root / "work")
    arr = {p.stem: np.load(p) for p in (root / "work").glob("*.npy")}
    return cfg, tok, peer, arr, root / "work"


def test_prepared_arrays_match_sources_and_tokenizer(prepared, digits_demo):
    cfg, tok, peer, arr, work = prepared
    src = open_source(cfg.data.train)
    n, B = len(src), cfg.data.batch_size
    assert arr["train_images"].shape == (n, 32, 32, 3) and arr["train_images"].dtype == np.uint8
    assert np.array_equal(arr["train_images"][7], np.asarray(src[7].load_image()))
    assert arr["schedule_images"].shape == arr["schedule_captions"].shape == (13, B)
    # every slot's caption belongs to its image, and its ids are the run tokenizer's for that caption
    assert np.array_equal(arr["train_caption_image"][arr["schedule_captions"]], arr["schedule_images"])
    first = np.concatenate([[0], np.cumsum([len(src[i].captions) for i in range(n)])[:-1]])
    for s, j in [(0, 0), (12, B - 1)]:
        i, row = arr["schedule_images"][s, j], arr["schedule_captions"][s, j]
        caption = src[int(i)].captions[row - first[i]]
        assert arr["train_caption_tokens"][row].tolist() == tok([caption])[0].tolist()
    templates = get_templates(cfg.data.val_templates)
    assert arr["prompt_tokens"].shape == (10, len(templates), 32)
    assert arr["prompt_tokens"][3, 1].tolist() == tok([fill(templates[1], "three")])[0].tolist()
    assert arr["val_images"].shape == (peer["num_val"], 32, 32, 3)
    assert sorted(set(arr["val_labels"].tolist())) == list(range(10))
    assert peer["eval_steps"] == [5, 10, 13] and peer["threads"] == 1 and peer["steps"] == 13


def test_open_clip_config_is_tiny_resnet(prepared):
    import json

    *_, work = prepared
    cfg = json.loads((work / "model" / "open_clip_config.json").read_text())
    m = cfg["model_cfg"]
    assert m["embed_dim"] == 64 and not m["quick_gelu"]
    assert m["vision_cfg"]["layers"] == [1, 1, 1, 1] and m["vision_cfg"]["width"] == 16
    assert 16 * 32 // m["vision_cfg"]["head_width"] == 8  # open_clip's attention-pool heads = clipforge's
    assert {k: m["text_cfg"][k] for k in ("context_length", "vocab_size", "width", "heads", "layers")} == \
        {"context_length": 32, "vocab_size": 1024, "width": 64, "heads": 2, "layers": 2}
    assert cfg["preprocess_cfg"]["size"] == 32 and cfg["preprocess_cfg"]["interpolation"] == "bicubic"
