"""Objectives end to end from the YAML config (issue #14): every registered loss trains on the digits demo,
declared needs are supplied or refused at config load, reinforced distillation never runs the teacher."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clipforge.errors import UsageError
from clipforge.losses import get_loss, list_losses, loss_needs
from clipforge.train import load_config, train

STEPS = 50


def _cfg(demo, *extra):
    return [f"data.train=jsonl:{demo['train_manifest']}", "data.batch_size=16", "model.name=tiny",
            "run.log_every=1", "run.checkpoint_every=1000", "run.progress=false", "run.threads=1",
            "optim.lr=0.002", "schedule.warmup_steps=5", *extra]


def _losses(run_dir, key="loss"):
    return [json.loads(x)[key] for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if key in json.loads(x)]


@pytest.fixture(scope="module")
def reinforced(digits_demo, tiny_checkpoint, tmp_path_factory):
    """A reinforcement store of the digits training set from a (random) tiny teacher, whose directory is
    then removed: training from the store cannot load or run it."""
    from clipforge.data import open_source
    from clipforge.train.reinforce import reinforce

    root = tmp_path_factory.mktemp("reinforce")
    teacher = root / "teacher"
    shutil.copytree(tiny_checkpoint(3), teacher)
    store = root / "store"
    summary = reinforce(open_source(f"jsonl:{digits_demo['train_manifest']}"), [str(teacher)], store,
                        augmentations=2, seed=0, progress=False)
    shutil.rmtree(teacher)
    return {"store": str(store), "summary": summary}


# What each loss needs from the config beyond the name (the model's logit bias, a reinforcement store).
def _extra_sets(name, options, reinforced):
    if name == "siglip":
        return ["model.overrides={logit_bias_init: -10, logit_scale_init: 2.302585}"]
    needs = loss_needs(get_loss(name, **yaml.safe_load(options or "{}")))
    if "teacher_embeddings" in needs:
        return [f"data.reinforcement={reinforced['store']}"]
    if "caption_logits" in needs:  # a captioning model
        return ["model.name=coca-tiny"]
    return []


# Every registered loss with its defaults, plus the option combinations docs/objectives.md advertises.
ADVERTISED = [(name, None) for name in list_losses()] + [
    ("cwcl", "{weights: teacher}"), ("filip", "{token_fraction: 0.25, chunk_size: 4}"),
    ("clip+multipos", "{sub_captions: 2, dot_precision: float32}")]


@pytest.mark.slow
@pytest.mark.parametrize("name, options", ADVERTISED, ids=[n + ("-" + "-".join(yaml.safe_load(o)) if o else "") for n, o in ADVERTISED])
def test_every_registered_loss_trains_from_yaml(name, options, digits_demo, reinforced, tmp_path, monkeypatch):
    """50 steps on the digits demo: finite loss everywhere, and the last steps lower than the first ones."""
    import clipforge.models.loading as loading

    real_load = loading.load_model

    def no_teacher(ref, *a, **k):  # the teacher's directory is gone; make any attempt to load it loud
        assert "teacher" not in str(ref), "a teacher was loaded during training"
        return real_load(ref, *a, **k)

    monkeypatch.setattr(loading, "load_model", no_teacher)
    sets = [f"loss.name={name}", f"run.steps={STEPS}", *([f"loss.options={options}"] if options else [])]
    cfg = load_config(None, _cfg(digits_demo, *sets, *_extra_sets(name, options, reinforced)))
    train(cfg, tmp_path / "run")
    losses = _losses(tmp_path / "run")
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_count_term_is_nonzero_exactly_with_numbers(digits_demo, tmp_path):
    """clip+count no longer trains plain CLIP silently: the digits captions name numbers ("seven"), so the
    count term is logged and non-zero; a source without numbers gives exactly zero."""
    cfg = load_config(None, _cfg(digits_demo, "loss.name=clip+count", "run.steps=2"))
    train(cfg, tmp_path / "run")
    assert all(v > 0 for v in _losses(tmp_path / "run", "loss/count"))

    rows = [json.loads(x) for x in Path(digits_demo["train_manifest"]).read_text().splitlines()[:40]]
    root = Path(digits_demo["train_manifest"]).parent
    for r in rows:
        r["image"] = str(root / r["image"])
        r["captions"] = ["a small handwritten digit"]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config(None, _cfg(digits_demo, "loss.name=clip+count", "run.steps=2", f"data.train=jsonl:{plain}"))
    train(cfg, tmp_path / "plain")
    assert _losses(tmp_path / "plain", "loss/count") == [0.0, 0.0]


def test_max_count_option_reaches_the_loader(digits_demo, tmp_path):
    """`loss.options: {max_count: 6}` bounds the loader's counterfactual numbers; out of range is one line."""
    from clipforge.data import open_source
    from clipforge.data.counterfactual import find_number
    from clipforge.data.loader import make_pair_loader
    from clipforge.models import create_model
    from clipforge.train.step import pair_extras

    extras = pair_extras(get_loss("clip+count", max_count=6))
    assert extras.counterfactuals and extras.max_count == 6
    rows = [json.loads(x) for x in Path(digits_demo["train_manifest"]).read_text().splitlines()[:64]]
    root = Path(digits_demo["train_manifest"]).parent
    for i, r in enumerate(rows):
        r["image"] = str(root / r["image"])
        r["captions"] = [f"a picture of {('two', 'three', 'four', 'five', 'six')[i % 5]} digits"]
    man = tmp_path / "count6.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in rows))
    model = create_model("tiny")
    loader = make_pair_loader(open_source(f"jsonl:{man}"), model.preprocess_train, model.tokenizer, 32,
                              extras=extras)
    values = {find_number(c)[2] for b in loader for c in b["counterfactual_captions"]}
    assert values and values <= {2, 3, 4, 5, 6}
    with pytest.raises(UsageError, match="max_count"):
        get_loss("clip+count", max_count=11)


@pytest.mark.parametrize("sets, missing", [
    (["loss.name=clip+distill"], "stored teacher embeddings"),
    (["loss.name=cwcl", "loss.options={weights: teacher}"], "stored teacher embeddings"),
    (["loss.name=filip", "run.gradcache_sub_batch=4"], "token-level features"),
    (["loss.name=clip+count", "run.gradcache_sub_batch=4"], "counterfactual captions"),
    (["loss.name=clip+multipos", "run.gradcache_sub_batch=4"], "several captions per image"),
    (["loss.name=longclip", "run.gradcache_sub_batch=4"], "first sentence"),
    (["loss.name=siglip"], "logit bias"),
])
def test_unsuppliable_inputs_refused_at_config_load(sets, missing, digits_demo):
    with pytest.raises(UsageError) as e:
        load_config(None, _cfg(digits_demo, "run.steps=1", *sets))
    msg = str(e.value)
    assert missing in msg and "\n" not in msg


def test_needs_are_declared_not_named():
    """The trainer reads declared needs; an option can change them (cwcl's teacher weights)."""
    assert loss_needs(get_loss("cwcl")) == []
    assert loss_needs(get_loss("cwcl", weights="teacher")) == ["teacher_embeddings"]
    assert loss_needs(get_loss("filip")) == ["token_features"]


def test_reinforced_batches_replay_the_stored_view(digits_demo, reinforced, tiny_checkpoint):
    """The loader replays a stored augmentation exactly: the stored teacher embedding equals a fresh teacher
    encoding of the view rebuilt from the stored parameters, and the student's pixels are that same crop."""
    from clipforge.data import open_source
    from clipforge.data.loader import PairExtras, make_pair_loader
    from clipforge.data.reinforced import ReinforcementStore
    from clipforge.encode import Encoder
    from clipforge.models import load_model

    store = ReinforcementStore(reinforced["store"])
    assert store.augmentations == 2 and store.num_teachers == 1
    teacher = load_model(tiny_checkpoint(3))   # the same weights as the (deleted) teacher
    student = load_model(tiny_checkpoint(0))
    src = open_source(f"jsonl:{digits_demo['train_manifest']}")
    loader = make_pair_loader(src, student.preprocess_train, student.tokenizer, 4, seed=5,
                              extras=PairExtras(reinforcement=store))
    batch = next(iter(loader))
    enc = Encoder.from_model(teacher)
    for i, sid in enumerate(batch["ids"]):
        row = store.row_of(sid)
        img = src[batch["indices"][i]].load_image()
        views = [teacher.preprocess_train.apply(img, store.params(row, a)) for a in range(store.augmentations)]
        fresh = enc.encode_pixels(torch.stack(views))                                   # (A, D)
        got = batch["teacher_image_embeds"][0][i].float()
        match = [float((f - got).abs().max()) for f in fresh]
        a = int(np.argmin(match))
        assert match[a] < 2e-3                                         # float16 storage
        torch.testing.assert_close(batch["pixels"][i],
                                   student.preprocess_train.apply(img, store.params(row, a)))
        c = store.captions(row).index(batch["captions"][i])
        torch.testing.assert_close(batch["teacher_text_embeds"][0][i].float(),
                                   enc.encode_texts([batch["captions"][i]])[0], atol=2e-3, rtol=0)
        assert c >= 0


def test_reinforce_cli_and_summary(digits_demo, tiny_checkpoint, tmp_path, capsys):
    from clipforge.cli import main

    rows = Path(digits_demo["train_manifest"]).read_text().splitlines()[:12]
    root = Path(digits_demo["train_manifest"]).parent
    manifest = tmp_path / "few.jsonl"
    manifest.write_text("\n".join(json.dumps({**json.loads(r), "image": str(root / json.loads(r)["image"])})
                                  for r in rows))
    out = tmp_path / "store"
    assert main(["data", "reinforce", f"jsonl:{manifest}", "--teacher", tiny_checkpoint(0), "--augmentations",
                 "3", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_samples"] == 12 and summary["augmentations"] == 3
    with pytest.raises(SystemExit) as e:   # bad input: argparse's one-line error, exit 2
        main(["data", "reinforce", f"jsonl:{manifest}", "--teacher", tiny_checkpoint(0), "--augmentations", "0",
              "--out", str(out)])
    assert e.value.code == 2


def test_counting_demo_set(tmp_path):
    from clipforge.data.counterfactual import find_number
    from clipforge.data.demo_counting import build_counting

    paths = build_counting(str(tmp_path / "c"), seed=1)
    rows = [json.loads(x) for x in Path(paths["train_manifest"]).read_text().splitlines()]
    assert {r["count"] for r in rows} == set(range(1, 7))
    for r in rows[:50]:
        for cap in r["captions"]:
            found = find_number(cap)
            assert (found is None) == (r["count"] == 1) and (found is None or found[2] == r["count"])


def test_counting_demo_count_fraction(tmp_path):
    """count_fraction: about that share of training images keep their count captions, the rest name colour and
    shape only; the images and the held-out set are the same as the full set's."""
    from clipforge.data.counterfactual import find_number
    from clipforge.data.demo_counting import build_counting

    full = build_counting(str(tmp_path / "full"), num_train=400, num_val=20, seed=2)
    part = build_counting(str(tmp_path / "part"), num_train=400, num_val=20, seed=2, count_fraction=0.25)
    rf, rp = ([json.loads(x) for x in Path(p["train_manifest"]).read_text().splitlines()] for p in (full, part))
    assert [(r["count"], r["color"], r["shape"]) for r in rf] == [(r["count"], r["color"], r["shape"]) for r in rp]
    assert Path(full["val_manifest"]).read_text() == Path(part["val_manifest"]).read_text()
    for a, b in zip(rf[:30], rp[:30]):
        assert Path(full["train_manifest"]).parent.joinpath(a["image"]).read_bytes() == \
            Path(part["train_manifest"]).parent.joinpath(b["image"]).read_bytes()
    kept = [r for r in rp if r["count"] > 1 and any(find_number(c) for c in r["captions"])]
    plain = [r for r in rp if r["count"] > 1 and not any(find_number(c) for c in r["captions"])]
    share = len(kept) / (len(kept) + len(plain))
    assert 0.15 < share < 0.35, share
    assert all(r["color"] in c and r["shape"] in c for r in plain for c in r["captions"])
    with pytest.raises(UsageError, match="count_fraction"):
        build_counting(str(tmp_path / "bad"), count_fraction=0.0)
