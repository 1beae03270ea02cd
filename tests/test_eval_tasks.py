"""The eval-task registry from the CLI: every zero-shot method, the ranked-retrieval task and the ranked-list
metrics of zeroshot-retrieval, each checked against an independent recomputation written out here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from clipforge.cli import main
from clipforge.data.sources import open_source
from clipforge.evaluate import TASKS, run_eval
from clipforge.evaluate.results import read_results
from clipforge.models import load_model
from clipforge.zeroshot import METHODS

CKPT_SEED = 11  # the `ckpt` fixture (conftest.py) saves a tiny model initialised with this seed
TEMPLATE = 'a photo of the number: "{c}".'


def _direct_features(ckpt, spec):
    """Image features and labels by hand: decode, preprocess, encode_image (no clipforge.encode)."""
    model = load_model(ckpt).eval()
    src = open_source(spec)
    with torch.no_grad():
        feats = model.encode_image(torch.stack([model.preprocess(src[i].image) for i in range(len(src))]))
    return model, src, feats.numpy(), np.array([src[i].label for i in range(len(src))])


def _ap_at_k(ranked_rel, n_pos, k):  # INQUIRE: sum of precision@i over hits in the top k / min(n_pos, k)
    hits, total = 0, 0.0
    for i, r in enumerate(ranked_rel[:k], 1):
        if r:
            hits += 1
            total += hits / i
    return total / min(n_pos, k)


def test_every_method_and_task_is_offered_by_the_cli():
    from clipforge.cli import command_flags, build_parser

    assert {"mean", "cupl", "zpe", "describe", "disclip"} <= set(METHODS.names())
    assert {"zeroshot-classification", "zeroshot-retrieval", "ranked-retrieval", "linear-probe"} <= set(TASKS.names())
    flags = command_flags(build_parser(["eval"]))
    for option in ("method", "templates", "descriptions", "reference", "mad_threshold", "pool_templates",
                   "disclip_top", "prompt_format", "cutoff", "queries", "k_shot", "test_dataset"):
        assert option in flags, option
    eval_parser = [a for a in build_parser(["eval"])._actions if a.dest == "command"][0].choices["eval"]
    method = next(a for a in eval_parser._actions if a.dest == "method")
    assert set(method.choices) == set(METHODS.names())


def test_ranked_retrieval_with_class_queries_matches_a_recomputation(ckpt, digits_demo, tmp_path):
    spec = f"imagefolder:{digits_demo['val_dir']}"
    out = tmp_path / "r.jsonl"
    assert main(["eval", "-m", ckpt, "--task", "ranked-retrieval", "-d", spec, "--templates", "digits",  # the set holding TEMPLATE only
                 "--cutoff", "20", "--out", str(out)]) == 0
    rec = read_results(out)[0]
    model, src, feats, labels = _direct_features(ckpt, spec)
    with torch.no_grad():
        q = F.normalize(model.encode_text(model.tokenizer([TEMPLATE.replace("{c}", c) for c in src.classnames])),
                        dim=-1).numpy()  # one template: the class vector is its embedding
    scores = feats @ q.T  # (N, C)
    aps, aps20, rrs = [], [], []
    for c in range(len(q)):
        rel = labels == c
        aps.append(average_precision_score(rel, scores[:, c]))
        ranked = rel[np.argsort(-scores[:, c], kind="stable")]
        aps20.append(_ap_at_k(ranked, rel.sum(), 20))
        first = np.flatnonzero(ranked[:20])
        rrs.append(1 / (first[0] + 1) if first.size else 0.0)
    m = rec["metrics"]
    # features encoded in one batch here and in batches of 256 there can differ by float rounding, which can
    # swap near-tied images of this random model (one at a time here, mAP moved by 2.6e-6); a wrong ranking or
    # formula moves these by far more
    assert m["mAP"] == pytest.approx(np.mean(aps), abs=1e-4)
    assert m["AP@20"] == pytest.approx(np.mean(aps20), abs=1e-4) and m["MRR"] == pytest.approx(np.mean(rrs), abs=1e-4)
    assert rec["num_queries"] == 10 and rec["num_images"] == len(labels) and rec["config"]["cutoff"] == 20


def test_ranked_retrieval_from_a_queries_file(ckpt, digits_demo, tmp_path):
    spec = f"imagefolder:{digits_demo['val_dir']}"
    src = open_source(spec)
    by_class: dict[int, list[str]] = {}
    for i in range(len(src)):
        by_class.setdefault(src[i].label, []).append(src[i].id)
    queries = tmp_path / "q.jsonl"
    rows = [{"query": TEMPLATE.replace("{c}", name), "relevant": by_class[c] + (["not/in/the/set.png"] if c == 0 else [])}
            for c, name in enumerate(src.classnames)]
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from_file = run_eval(ckpt, "ranked-retrieval", spec, queries=str(queries), progress=False)
    from_classes = run_eval(ckpt, "ranked-retrieval", spec, templates=[TEMPLATE], progress=False)
    assert from_file["metrics"] == pytest.approx(from_classes["metrics"])  # the same queries, two ways
    assert from_file["unmatched_relevant"] == 1 and from_classes["unmatched_relevant"] == 0
    queries.write_text('{"query": "x"}\n')
    with pytest.raises(Exception, match=r'line 1: expected \{"query": "text", "relevant": \[ids\]\}'):
        run_eval(ckpt, "ranked-retrieval", spec, queries=str(queries))


def test_zeroshot_retrieval_cutoff_adds_ranked_list_metrics(ckpt, photos_demo):
    spec = f"files:{photos_demo['images_dir']}"
    rec = run_eval(ckpt, "zeroshot-retrieval", spec, cutoff=5, progress=False)
    m = rec["metrics"]
    model = load_model(ckpt).eval()
    src = open_source(spec)
    with torch.no_grad():
        img = torch.cat([model.encode_image(model.preprocess(src[i].image)[None]) for i in range(len(src))])
        caps = [(i, c) for i in range(len(src)) for c in src[i].captions]
        txt = model.encode_text(model.tokenizer([c for _, c in caps]))
    s = (txt @ img.T).numpy()  # (M, N) text -> image
    ranks = np.array([1 + (s[j] > s[j, i]).sum() for j, (i, _) in enumerate(caps)])
    assert m["t2i_MRR"] == pytest.approx(np.mean(np.where(ranks <= 5, 1.0 / ranks, 0.0)), abs=1e-6)
    assert m["t2i_AP@5"] == pytest.approx(m["t2i_MRR"], abs=1e-6)  # one relevant image: AP@k == RR@k
    assert {"i2t_AP@5", "i2t_nDCG@5", "i2t_MRR", "t2i_nDCG@5", "t2i_R@1"} <= set(m)
    assert rec["config"]["cutoff"] == 5


def test_eval_runs_zpe_and_describe_and_refuses_foreign_options(ckpt, digits_demo, tmp_path, capsys):
    spec = f"imagefolder:{digits_demo['val_dir']}"
    desc = tmp_path / "d.json"
    names = open_source(spec).classnames
    desc.write_text(json.dumps({c: [f"the digit {c} written by hand", f"a handwritten {c}"] for c in names}))
    out = tmp_path / "r.jsonl"
    for extra in (["--method", "zpe", "--templates", "openai_imagenet_7", "--mad-threshold", "0.5"],
                  ["--method", "describe", "--descriptions", str(desc)],
                  ["--method", "disclip", "--descriptions", str(desc), "--disclip-top", "2"]):
        assert main(["eval", "-m", ckpt, "--task", "zeroshot-classification", "-d", spec, "--out", str(out),
                     *extra]) == 0, capsys.readouterr().err
    recs = read_results(out)
    assert [r["config"]["method"] for r in recs] == ["zpe", "describe", "disclip"]
    assert recs[0]["config"]["mad_threshold"] == 0.5 and recs[2]["config"]["disclip_top"] == 2
    assert all(r["metrics"]["n"] == 360 and 0 <= r["metrics"]["top1"] <= 1 for r in recs)
    capsys.readouterr()
    assert main(["eval", "-m", ckpt, "--task", "zeroshot-classification", "-d", spec, "--mad-threshold", "1"]) == 2
    assert "--mad-threshold does not apply to zero-shot method 'mean' (it belongs to zero-shot method zpe)" in \
        capsys.readouterr().err
