"""`clipforge eval --task zeroshot-retrieval` on a Karpathy-split JSON built from the photos demo, checked
against a brute-force numpy recall@K over the full similarity matrix."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clipforge.cli import main
from clipforge.evaluate.results import read_results
from clipforge.evaluate.runner import run_eval


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from clipforge.data.demo_sets import build_photos

    return build_photos(str(tmp_path_factory.mktemp("demo") / "photos"), max_side=64)


CKPT_SEED = 3  # the `ckpt` fixture (conftest.py) saves a tiny model initialised with this seed


def karpathy(photos, path: Path, n_test: int, missing: bool = False) -> list[dict]:
    """Write dataset_x.json next to the photos: the first n_test images are 'test', the rest 'train'."""
    rows = [json.loads(x) for x in Path(photos["manifest"]).read_text().splitlines()]
    images = [{"filepath": "images", "filename": Path(r["image"]).name, "split": "test" if i < n_test else "train",
               "sentences": [{"raw": c, "tokens": c.split()} for c in r["captions"]], "imgid": i}
              for i, r in enumerate(rows)]
    if missing:
        images.insert(1, {"filepath": "images", "filename": "gone.png", "split": "test",
                          "sentences": [{"raw": "a photo that was deleted"}]})
    path.write_text(json.dumps({"images": images, "dataset": "photos"}))
    return rows


def brute_force_recall(model, root, rows, ks=(1, 5, 10)):
    from PIL import Image

    with torch.no_grad():
        px = torch.stack([model.preprocess(Image.open(Path(root) / r["image"]).convert("RGB")) for r in rows])
        img = torch.nn.functional.normalize(model.encode_image(px), dim=-1).double().numpy()
        caps = [c for r in rows for c in r["captions"]]
        owner = np.repeat(np.arange(len(rows)), [len(r["captions"]) for r in rows])
        txt = torch.nn.functional.normalize(model.encode_text(model.tokenizer(caps)), dim=-1).double().numpy()
    s = img @ txt.T  # (N, M)
    order_i2t = np.argsort(-s, axis=1, kind="stable")
    i2t_rank = np.array([1 + np.flatnonzero(owner[order_i2t[i]] == i)[0] for i in range(len(rows))])
    order_t2i = np.argsort(-s.T, axis=1, kind="stable")
    t2i_rank = np.array([1 + np.flatnonzero(order_t2i[j] == owner[j])[0] for j in range(len(caps))])
    out = {f"i2t_R@{k}": float((i2t_rank <= k).mean()) for k in ks}
    out.update({f"t2i_R@{k}": float((t2i_rank <= k).mean()) for k in ks})
    out.update(i2t_mean_rank=i2t_rank.mean(), i2t_median_rank=float(np.median(i2t_rank)),
               t2i_mean_rank=t2i_rank.mean(), t2i_median_rank=float(np.median(t2i_rank)))
    return out


def test_karpathy_json_matches_brute_force(photos, ckpt, tmp_path, capsys):
    from clipforge.models import load_model

    js = Path(photos["root"]) / "dataset_photos.json"
    rows = karpathy(photos, js, n_test=16, missing=True)
    out = tmp_path / "r.jsonl"
    assert main(["eval", "-m", ckpt, "--task", "zeroshot-retrieval", "-d", str(js), "--out", str(out),
                 "--batch-size", "5"]) == 0
    rec = read_results(out)[0]
    m = rec["metrics"]
    assert rec["num_images"] == 16 and rec["num_texts"] == sum(len(r["captions"]) for r in rows[:16])
    assert rec["skipped"]["by_reason"] == {"missing_file": 1}  # the deleted image, with its caption
    want = brute_force_recall(load_model(ckpt).eval(), photos["root"], rows[:16])
    for k, v in want.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k
    assert m["i2t_n"] == 16 and m["t2i_n"] == rec["num_texts"] and rec["config"]["split"] == "test"
    assert "i2t_R@1=" in capsys.readouterr().out


def test_split_image_root_and_same_numbers_as_the_manifest(photos, ckpt, tmp_path):
    n = photos["num_photos"]
    js = tmp_path / "dataset_photos.json"
    karpathy(photos, js, n_test=n)  # every image in 'test'
    flat = tmp_path / "flat"  # images in one folder although the JSON says filepath "images"
    shutil.copytree(Path(photos["images_dir"]), flat)
    a = run_eval(ckpt, "zeroshot-retrieval", str(js), image_root=str(flat), progress=False)
    b = run_eval(ckpt, "zeroshot-retrieval", f"jsonl:{photos['manifest']}", progress=False)
    assert a["num_images"] == b["num_images"] == n
    assert a["metrics"] == b["metrics"]  # same images, captions and order through two readers
    karpathy(photos, js, n_test=5)
    c = run_eval(ckpt, "zeroshot-retrieval", f"karpathy:{js}", split="train", image_root=str(flat),
                 progress=False)
    assert c["num_images"] == n - 5 and c["config"]["split"] == "train"


def test_retrieval_errors(photos, ckpt, tmp_path, capsys):
    js = tmp_path / "dataset_photos.json"
    karpathy(photos, js, n_test=3)
    rc = main(["eval", "-m", ckpt, "--task", "zeroshot-retrieval", "-d", str(js), "--split", "val"])
    assert rc == 2 and "split 'val' has no images" in capsys.readouterr().err
    folder = tmp_path / "nocaps" / "0"
    folder.mkdir(parents=True)
    shutil.copy(Path(photos["images_dir"]) / "astronaut.png", folder / "a.png")
    rc = main(["eval", "-m", ckpt, "--task", "zeroshot-retrieval", "-d", f"imagefolder:{folder.parent}"])
    assert rc == 2 and "no captions" in capsys.readouterr().err
