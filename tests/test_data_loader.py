"""Training/eval loaders: deterministic order, exact resume, disjoint rank shards, counted skips, workers."""
import os

import numpy as np
import pytest
import torch

from clipforge.data import make_labelled_loader, make_pair_loader, open_source
from data_fixtures import make_pair_folder

N_GOOD = 23


def to_tensor(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)


def noisy_transform(img):
    """A random train transform: its randomness must be reproducible per sample for exact resume."""
    return to_tensor(img) + 0.1 * torch.rand(3, 1, 1)


def tokenizer(texts):
    return torch.tensor([[sum(map(ord, t)) % 1000, len(t)] for t in texts], dtype=torch.long)  # (B, 2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("loader"))
    make_pair_folder(root, n=N_GOOD, captions=3)
    with open(os.path.join(root, "zz_text.png"), "wb") as f:
        f.write(b"not a png")
    with open(os.path.join(root, "zz_text.txt"), "w") as f:
        f.write("caption of a broken file\n")
    return root


def flat(loader):
    out = []
    for b in loader:
        assert b["pixels"].shape[0] == b["tokens"].shape[0] == len(b["ids"])
        for i, sid in enumerate(b["ids"]):
            out.append((sid, b["captions"][i], b["pixels"][i], b["tokens"][i]))
    return out


def same(a, b):
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x[2], y[2]) and torch.equal(x[3], y[3])


@pytest.mark.parametrize("on_bad", ["replace", "drop"])
@pytest.mark.parametrize("start", [0, 4, 5, 12, 17])
def test_resume_yields_exactly_the_rest_of_an_uninterrupted_pass(folder, start, on_bad):
    src = open_source(f"files:{folder}")  # 24 files, one of them bad
    kw = dict(batch_size=4, seed=7, epoch=3, drop_last=False, on_bad=on_bad)
    loader = make_pair_loader(src, noisy_transform, tokenizer, **kw)
    full = flat(loader)
    resumed = flat(make_pair_loader(src, noisy_transform, tokenizer, start=start, **kw))
    if on_bad == "replace":  # one row per position: the bad one is filled by the next readable sample
        assert len(full) == len(src)
        same(resumed, full[start:])
    else:  # the bad position yields nothing, before or after `start`
        bad_idx = [i for i in range(len(src)) if src[i].id == "zz_text.png"][0]
        bad_before = int((loader.dataset.order[:start] == bad_idx).sum())
        assert len(full) == len(src) - 1
        same(resumed, full[start - bad_before:])


def test_ranks_are_disjoint_and_cover_the_epoch_and_resume_per_rank(folder):
    src = open_source(f"files:{folder}")  # 24 samples, one bad
    W, B = 3, 2
    kw = dict(batch_size=B, seed=1, epoch=0, world_size=W, on_bad="drop")
    per_rank = [make_pair_loader(src, to_tensor, tokenizer, rank=r, **kw) for r in range(W)]
    idx = [sorted(i for b in ld for i in b["indices"].tolist()) for ld in per_rank]
    assert all(len(ld) == len(per_rank[0]) for ld in per_rank)  # equal steps on every rank
    flat_idx = [i for r in idx for i in r]
    assert len(flat_idx) == len(set(flat_idx))  # no overlap
    assert len(flat_idx) == 24 - 1  # drop_last: 24 is a multiple of W*B; the bad one is dropped
    # Resume after 2 global steps: each rank continues exactly where it was.
    start = 2 * W * B
    for r in range(W):
        full = [b["ids"] for b in make_pair_loader(src, to_tensor, tokenizer, rank=r, **kw)]
        res = [b["ids"] for b in make_pair_loader(src, to_tensor, tokenizer, rank=r, start=start, **kw)]
        assert res == full[2:]
        assert per_rank[r].position_after(2) == start


def test_order_and_captions_depend_on_seed_and_epoch_only(folder):
    src = open_source(f"files:{folder}")
    run = lambda **k: [(s, c) for s, c, _, _ in flat(make_pair_loader(src, to_tensor, tokenizer, 4, **k))]
    ids = lambda pairs: [sid for sid, _ in pairs]
    a = run(seed=0, epoch=0)
    torch.manual_seed(123)  # the global random state plays no part, nor does a freshly opened source
    np.random.seed(123)
    again = [(s, c) for s, c, _, _ in flat(make_pair_loader(open_source(f"files:{folder}"), to_tensor, tokenizer, 4,
                                                            seed=0, epoch=0))]
    assert again == a
    assert ids(run(seed=0, epoch=1)) != ids(a)  # another epoch: another order
    s1 = run(seed=1, epoch=0)
    assert ids(s1) != ids(a) and run(seed=1, epoch=0) == s1  # another seed: another order, as reproducible
    caps = {s.id: s.captions for s in src}
    readable = set(caps) - {"zz_text.png"}

    def captions_by_epoch(seed):
        out = {}
        for epoch in range(6):
            got = run(seed=seed, epoch=epoch, shuffle=False, drop_last=False)
            assert set(ids(got)) == readable  # every readable sample, every epoch
            for sid, cap in got:
                assert cap in caps[sid]
                out[epoch, sid] = cap
        return out

    seed0, seed1 = captions_by_epoch(0), captions_by_epoch(1)
    multi = [sid for sid, c in caps.items() if len(c) == 3]
    assert multi and all(len({seed0[e, sid] for e in range(6)}) >= 2 for sid in multi)  # varies across epochs
    assert any(seed0[e, sid] != seed1[e, sid] for e in range(6) for sid in multi)  # and across seeds
    assert captions_by_epoch(1) == seed1


def test_bad_samples_are_replaced_counted_once_and_reach_main_process_from_workers(folder):
    src = open_source(f"files:{folder}")
    kw = dict(batch_size=6, seed=3, epoch=0, drop_last=False)
    l0 = make_pair_loader(src, to_tensor, tokenizer, **kw)
    b0 = list(l0)
    assert [len(b["ids"]) for b in b0] == [6, 6, 6, 6]  # replaced: batches keep their size
    assert dict(l0.skipped) == {"not_an_image": 1} and l0.skipped.samples == [("zz_text.png", "not_an_image")]
    l2 = make_pair_loader(src, to_tensor, tokenizer, workers=2, **kw)
    b2 = list(l2)
    assert dict(l2.skipped) == {"not_an_image": 1}
    assert [b["ids"] for b in b2] == [b["ids"] for b in b0]
    assert all(torch.equal(x["pixels"], y["pixels"]) for x, y in zip(b0, b2))


def test_labelled_loader_and_errors(tmp_path):
    from PIL import Image

    for c in range(3):
        os.makedirs(tmp_path / f"c{c}")
        for i in range(c + 1):
            Image.new("RGB", (5, 5), (c * 100, 0, 0)).save(tmp_path / f"c{c}" / f"{i}.png")
    (tmp_path / "c2" / "bad.png").write_bytes(b"")
    src = open_source(str(tmp_path))
    ld = make_labelled_loader(src, to_tensor, batch_size=4)
    batches = list(ld)
    labels = torch.cat([b["labels"] for b in batches]).tolist()
    ids = [i for b in batches for i in b["ids"]]
    assert labels == [int(i[1]) for i in ids] == [0, 1, 1, 2, 2, 2]
    for b in batches:  # red channel encodes the class
        assert torch.allclose(b["pixels"][:, 0, 0, 0] * 255, b["labels"].float() * 100, atol=0.5)
    assert dict(ld.skipped) == {"empty_file": 1}
    from clipforge.errors import UsageError

    with pytest.raises(UsageError):
        make_pair_loader(src, to_tensor, tokenizer, 0)
    with pytest.raises(UsageError):
        make_pair_loader(src, to_tensor, tokenizer, 2, rank=2, world_size=2)
    with pytest.raises(UsageError):
        make_pair_loader(src, to_tensor, tokenizer, 2, start=10_000)
    # An image folder has no captions: the pair loader reports that instead of training on nothing.
    pl = make_pair_loader(src, to_tensor, tokenizer, 2, on_bad="drop", drop_last=False)
    assert sum(len(b["ids"]) for b in pl) == 0 and pl.skipped["no_caption"] == 7  # the empty file has no caption either


def test_with_the_tiny_model_transforms_and_tokenizer(folder, tiny_model):
    m = tiny_model
    src = open_source(f"files:{folder}")
    ld = make_pair_loader(src, m.preprocess_train, m.tokenizer, 8, seed=0)
    b = next(iter(ld))
    size, T = m.config.vision.image_size, m.config.text.context_length
    assert b["pixels"].shape == (8, 3, size, size) and b["tokens"].shape == (8, T)
    assert b["tokens"].dtype == torch.long
    again = next(iter(make_pair_loader(src, m.preprocess_train, m.tokenizer, 8, seed=0)))
    assert torch.equal(b["pixels"], again["pixels"])  # the random crop is seeded per sample
    with torch.no_grad():
        out = m(b["pixels"], b["tokens"])
    assert out.image_embeds.shape == (8, m.config.embed_dim)
