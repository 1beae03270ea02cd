"""clipforge's CoCa against open_clip's on the same random weights (tests/golden/coca/, written in the reference
environment by tools/make_coca_golden.py): the open_clip directory loads through `load_model`, and embeddings,
image tokens, teacher-forced caption logits and greedy captions agree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from clipforge.models import default_tokenizer, load_model
from clipforge.models.coca import IGNORE_LABEL, CoCaModel
from clipforge.models.generation import generate

GOLDEN = Path(__file__).parent / "golden" / "coca"
TOL = dict(rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def ref():
    return {k: torch.from_numpy(v) for k, v in np.load(GOLDEN / "outputs.npz").items()}


@pytest.fixture(scope="module")
def model():
    return load_model(str(GOLDEN), tokenizer=default_tokenizer(12))


def test_open_clip_directory_loads_as_coca(model):
    assert isinstance(model, CoCaModel) and not model.training
    cfg = model.config
    assert (cfg.pooler_queries, cfg.pooler_heads, cfg.decoder.layers, cfg.vision.heads) == (9, 2, 2, 2)


def test_embeddings_and_tokens_match_open_clip(model, ref):
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(ref["images"], normalize=False), ref["image_raw"], **TOL)
        torch.testing.assert_close(model.encode_text(ref["ids"], normalize=False), ref["text_raw"], **TOL)
        torch.testing.assert_close(model.image_tokens(ref["images"]), ref["image_tokens"], **TOL)


def test_forward_matches_open_clip(model, ref):
    with torch.no_grad():
        out = model(ref["images"], ref["ids"])
    torch.testing.assert_close(out.image_embeds, ref["image_features"], **TOL)
    torch.testing.assert_close(out.text_embeds, ref["text_features"], **TOL)
    torch.testing.assert_close(out.caption_logits, ref["logits"], **TOL)
    real = out.caption_labels != IGNORE_LABEL
    assert torch.equal(out.caption_labels[real], ref["labels"][real])
    assert (ref["labels"][~real] == 0).all() and real.sum() == (ref["ids"][:, 1:] != 0).sum()
    torch.testing.assert_close(out.logit_scale, ref["logit_scale"].reshape(()), **TOL)


def test_greedy_captions_match_open_clip_generate(model, ref):
    # open_clip generate(top_k=1, seq_len=10, min_seq_len=3): start + at most 8 tokens + end, no end before 2
    with torch.no_grad():
        ids = generate(model, model.image_tokens(ref["images"]), sot=512, eot=513, pad=0, method="greedy",
                       max_tokens=8, min_tokens=2)
    want = [[t for t in row[1:] if t != 513] for row in ref["generated"].tolist()]
    assert ids == want
