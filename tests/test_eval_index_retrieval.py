"""`clipforge eval --task zeroshot-retrieval` on an index directory: recall from the stored vectors equals a
brute-force numpy recall over the full similarity matrix of those vectors, and the in-memory eval of the same
one-caption-per-image data with the same model."""
import json
from pathlib import Path

import numpy as np
import pytest

from clipforge.cli import main
from clipforge.errors import UsageError
from clipforge.evaluate.results import read_results
from clipforge.evaluate.runner import run_eval


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from clipforge.data.demo_sets import build_photos

    return build_photos(str(tmp_path_factory.mktemp("demo") / "photos"), max_side=64)


def _manifest(photos, path: Path, drop_caption: str | None = None, all_captions: bool = False) -> list[dict]:
    """A JSONL next to the photos with one caption per image (all of them with all_captions); the photo
    named drop_caption gets none."""
    rows = [json.loads(x) for x in Path(photos["manifest"]).read_text().splitlines()]
    out = [{"id": r["id"], "image": str(Path(photos["root"]) / r["image"]),
            "captions": [] if r["id"] == drop_caption else (r["captions"] if all_captions else r["captions"][:1])}
           for r in rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return out


@pytest.fixture(scope="module")
def index(photos, tmp_path_factory):
    """A tiny index of the photos, one caption each, except the second photo that has none."""
    from clipforge.retrieval.build import build_index

    d = tmp_path_factory.mktemp("idx")
    rows = [json.loads(x) for x in Path(photos["manifest"]).read_text().splitlines()]
    man = d / "one.jsonl"
    rows = _manifest(photos, man, drop_caption=rows[1]["id"])
    build_index(f"jsonl:{man}", "tiny", d / "index", progress=False, precision="fp32")
    return {"dir": str(d / "index"), "manifest": str(man), "rows": rows}


def brute_force(img: np.ndarray, txt: np.ndarray, owner: np.ndarray, ks=(1, 5, 10)) -> dict:
    """Recall@K and ranks from the full (N, M) float64 score matrix, stable sort (lower index first)."""
    s = img.astype(np.float64) @ txt.astype(np.float64).T  # (N, M)
    captioned = np.unique(owner)
    o = np.argsort(-s, axis=1, kind="stable")
    i2t = np.array([1 + np.flatnonzero(owner[o[i]] == i)[0] for i in captioned])
    o = np.argsort(-s.T, axis=1, kind="stable")
    t2i = np.array([1 + np.flatnonzero(o[j] == owner[j])[0] for j in range(len(owner))])
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        out.update({f"{name}_R@{k}": float((r <= k).mean()) for k in ks})
        out.update({f"{name}_mean_rank": float(r.mean()), f"{name}_median_rank": float(np.median(r)),
                    f"{name}_n": len(r)})
    return out


def test_index_recall_matches_brute_force_and_in_memory_eval(index, tmp_path):
    from PIL import Image

    from clipforge.encode import Encoder
    from clipforge.retrieval.store import EmbeddingStore

    out = tmp_path / "r.jsonl"
    rec = run_eval(None, "zeroshot-retrieval", index["dir"], out=str(out))
    assert read_results(out)[0]["metrics"] == rec["metrics"]
    n = len(index["rows"])
    assert rec["dataset"] == index["dir"] and rec["model"] == "tiny" and rec["task"] == "zeroshot-retrieval"
    assert rec["num_images"] == n and rec["num_texts"] == n - 1  # photo 1 has no caption: no text
    assert rec["captions_per_image"] == 1 and rec["dropped_captions"] == 0 and rec["source_captions"] == n - 1

    with EmbeddingStore.open(index["dir"]) as st:
        img, ids = st.load("img")
        txt, _ = st.load("text")
    has = np.linalg.norm(txt, axis=1) > 0
    assert has.sum() == n - 1 and not has[1]
    want = brute_force(img, txt[has], np.flatnonzero(has))
    for k, v in want.items():
        assert rec["metrics"][k] == pytest.approx(v, abs=1e-12), k
    assert rec["metrics"]["i2t_n"] == n - 1  # the uncaptioned image is a t2i key only

    # The in-memory eval embeds the same images and captions with the same weights (Encoder.load's fixed
    # seed). The index holds those vectors rounded to float16, so the two agree wherever that rounding flips
    # no near-tie; this random tiny model has pairs within 1e-6, so the check goes through the fp32 vectors.
    enc = Encoder.load("tiny", device="cpu", precision="fp32")
    mem = run_eval(enc, "zeroshot-retrieval", f"jsonl:{index['manifest']}", model_name="tiny", progress=False)
    assert mem["num_images"] == rec["num_images"] and mem["num_texts"] == rec["num_texts"]
    img32 = enc.encode_images([Image.open(r["image"]).convert("RGB") for r in index["rows"]]).numpy()  # (N, D)
    txt32 = enc.encode_texts([r["captions"][0] for r in index["rows"] if r["captions"]]).numpy()  # (M, D)
    assert np.abs(img32 - img).max() < 2e-3 and np.abs(txt32 - txt[has]).max() < 2e-3  # stored = embedded
    want32 = brute_force(img32, txt32, np.flatnonzero(has))
    for k, v in want32.items():
        assert mem["metrics"][k] == pytest.approx(v, abs=1e-12), k
    if want32 == want:  # rounding flipped no order (true for this data on the machines we ran)
        assert rec["metrics"] == mem["metrics"]


def test_several_captions_per_image_are_recorded_as_one(photos, tmp_path):
    from clipforge.retrieval.build import build_index

    man = tmp_path / "all.jsonl"
    rows = _manifest(photos, man, all_captions=True)
    build_index(f"jsonl:{man}", "tiny", tmp_path / "index", progress=False, precision="fp32")
    rec = run_eval("tiny", "zeroshot-retrieval", str(tmp_path / "index"))
    n_caps = sum(len(r["captions"]) for r in rows)
    assert n_caps > len(rows)  # the demo has several captions per photo
    assert rec["captions_per_image"] == 1 and rec["num_texts"] == len(rows)
    assert rec["source_captions"] == n_caps and rec["dropped_captions"] == n_caps - len(rows)


def test_cli_on_index_without_and_with_the_model(index, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert main(["eval", "--task", "zeroshot-retrieval", "-d", index["dir"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"tiny | {index['dir']} | zeroshot-retrieval: i2t_R@1=" in printed
    assert main(["eval", "-m", "tiny", "--task", "zeroshot-retrieval", "-d", index["dir"], "--out", str(out),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    a, b = read_results(out)
    assert a["metrics"] == b["metrics"] == printed["metrics"] == run_eval(None, "zeroshot-retrieval",
                                                                          index["dir"])["metrics"]
    assert a["model"] == b["model"] == "tiny" and a["dataset"] == index["dir"]


def test_mismatched_model_and_other_errors(index, tmp_path, capsys):
    with pytest.raises(UsageError, match="differs from the model the index"):
        run_eval("vit-b-32", "zeroshot-retrieval", index["dir"])
    rc = main(["eval", "-m", str(tmp_path), "--task", "zeroshot-retrieval", "-d", index["dir"]])
    err = capsys.readouterr().err
    assert rc == 2 and "differs from the model the index" in err and "'tiny'" in err
    with pytest.raises(UsageError, match="zeroshot-retrieval only"):
        run_eval(None, "zeroshot-classification", index["dir"])
    with pytest.raises(UsageError, match="`split` does not apply"):
        run_eval(None, "zeroshot-retrieval", index["dir"], split="test")
    rc = main(["eval", "--task", "zeroshot-retrieval", "-d", f"jsonl:{index['manifest']}"])
    assert rc == 2 and "needs a --model" in capsys.readouterr().err
