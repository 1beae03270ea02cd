"""Token merging in index jobs and the service (issue 30): `index build --token-merge R` embeds with it and records
it in index.json; a resumed build and `index update` reuse it and refuse another; r = 0 is a plain build, bit for
bit; image queries (searcher, `serve`) embed like the collection; the CLI says the flags."""

import base64
import io
import json
import os
import shutil

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.cli import main
from clipforge.encode import Encoder
from clipforge.errors import UsageError
from clipforge.retrieval.build import build_index, update_index
from clipforge.retrieval.index_dir import read_info
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.retrieval.store import EmbeddingStore
from clipforge.serve.app import create_app

N = 8  # photos per index: every test here builds on the tiny ViT (4 blocks, 65 tokens)


def _vectors(root) -> dict:
    """key -> (id, float64 stored vector)."""
    with EmbeddingStore.open(root) as s:
        x, ids = s.load("img")
        meta = s.metadata(["id", "key"])
    key_of = dict(zip(meta.column("id").to_pylist(), meta.column("key").to_pylist()))
    return {key_of[int(i)]: (int(i), v.astype(np.float64)) for i, v in zip(ids, x)}


def _cos(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _merged_not_exact(stored, merged, exact) -> bool:
    """`stored` is the merged tower's vector (float16 storage moves a vector ~1e-7 in cosine distance), and
    measurably not the exact one."""
    return 1 - _cos(stored, merged) < (1 - _cos(stored, exact)) / 10


@pytest.fixture(scope="module")
def photos(photos_demo, tmp_path_factory):
    d = tmp_path_factory.mktemp("tm") / "photos"
    d.mkdir()
    src = photos_demo["images_dir"]
    for f in sorted(f for f in os.listdir(src) if f.endswith(".png"))[:N]:
        shutil.copy2(os.path.join(src, f), d)
        shutil.copy2(os.path.join(src, f[:-4] + ".txt"), d)
    return d


@pytest.fixture(scope="module")
def builds(photos, tmp_path_factory):
    """The same photos built exact, with r = 0, and with ToMe r = 2."""
    root = tmp_path_factory.mktemp("tm_builds")
    out = {}
    for name, opts in (("plain", {}), ("r0", {"token_merge": 0}), ("r2", {"token_merge": "2"})):
        build_index(f"files:{photos}", "tiny", root / name, batch_size=4, workers=0, progress=False, **opts)
        out[name] = root / name
    return out


def test_build_records_the_merge_and_embeds_with_it(builds, photos):
    info = read_info(builds["r2"])
    assert info["token_merge"]["r"] == 2 and info["token_merge"]["method"] == "tome"
    assert read_info(builds["plain"])["token_merge"] is None
    merged, exact = _vectors(builds["r2"]), _vectors(builds["plain"])
    assert set(merged) == set(exact) and len(merged) == N
    # the stored vectors are what the merged tower gives for each file (float16 storage)
    enc = Encoder.load("tiny", token_merge=2)
    keys = sorted(merged)
    want = enc.encode_images([str(photos / k) for k in keys]).numpy()
    np.testing.assert_allclose(np.stack([merged[k][1] for k in keys]), want, atol=2e-3)
    # approximate: not the exact vectors, but close to them (measured on this random tiny ViT: min cosine
    # 0.9994, mean cosine distance 6e-5; float16 storage alone moves a vector by ~1e-7)
    cos = np.array([_cos(merged[k][1], exact[k][1]) for k in keys])
    assert cos.min() > 0.99
    assert all(_merged_not_exact(merged[k][1], w, exact[k][1]) for k, w in zip(keys, want))


def test_r0_is_a_plain_build(builds):
    plain, r0 = _vectors(builds["plain"]), _vectors(builds["r0"])
    assert plain.keys() == r0.keys()
    for k in plain:
        assert plain[k][0] == r0[k][0] and np.array_equal(plain[k][1], r0[k][1]), k
    assert read_info(builds["r0"])["token_merge"] is None


def test_update_and_resume_reuse_the_setting_and_refuse_another(builds, photos, photos_demo, tmp_path):
    src = tmp_path / "photos"
    shutil.copytree(photos, src)
    out = tmp_path / "idx"
    build_index(f"files:{src}", "tiny", out, batch_size=4, workers=0, progress=False, token_merge=2)
    new = sorted(f for f in os.listdir(photos_demo["images_dir"]) if f.endswith(".png"))[N]
    shutil.copy2(os.path.join(photos_demo["images_dir"], new), src)
    for bad in ({"token_merge": 4}, {"merge_method": "pitome"}, {"token_merge": 0}):
        with pytest.raises(UsageError, match="tome r=2") as e:
            update_index(out, workers=0, progress=False, **bad)
        assert "\n" not in str(e.value) and "--" not in str(e.value)
    with pytest.raises(UsageError, match="tome r=2"):  # a resumed build too
        build_index(f"files:{src}", "tiny", out, workers=0, progress=False, token_merge="3")
    assert _vectors(out).keys() == _vectors(builds["r2"]).keys()  # refused before anything was embedded
    s = update_index(out, workers=0, progress=False)  # the recorded setting
    assert s["added"] == 1 and s["token_merge"]["r"] == 2
    stored = _vectors(out)[new][1]
    merged = Encoder.load("tiny", token_merge=2).encode_images([str(src / new)]).numpy()[0]
    exact = Encoder.load("tiny").encode_images([str(src / new)]).numpy()[0]
    np.testing.assert_allclose(stored, merged, atol=2e-3)
    assert _merged_not_exact(stored, merged, exact)
    update_index(out, workers=0, progress=False, token_merge="2", merge_method="tome")  # the same, spelled out
    assert read_info(out)["token_merge"]["r"] == 2
    with pytest.raises(UsageError, match="needs `token_merge`"):
        build_index(f"files:{src}", "tiny", tmp_path / "other", workers=0, progress=False, merge_method="pitome")


def _b64_png(path) -> str:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_image_queries_embed_like_the_collection(builds, photos):
    key = sorted(os.listdir(photos))[0]
    stored = _vectors(builds["r2"])[key][1]
    s = IndexSearcher(builds["r2"])
    assert s.token_merge["r"] == 2 and s.stats()["token_merge"]["r"] == 2
    merged = s.encode_image([str(photos / key)])[0]
    np.testing.assert_allclose(merged, stored, atol=2e-3)
    exact = IndexSearcher(builds["r2"], token_merge=0)  # asked for: exact queries over the merged index
    assert exact.token_merge is None
    assert _merged_not_exact(stored, merged, exact.encode_image([str(photos / key)])[0])
    with pytest.raises(UsageError, match="needs `token_merge`"):
        IndexSearcher(builds["plain"], merge_method="pitome")


def test_serve_token_merge_answers_an_image_query(builds, photos, monkeypatch):
    """`clipforge serve INDEX --token-merge 2` over an exact index: image queries embed merged (the flag wins
    over the index's record), and the image still finds itself; /stats says both settings."""
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append(target))
    assert main(["serve", str(builds["plain"]), "--token-merge", "2", "--reload-interval", "0"]) == 0
    c = TestClient(calls[-1], base_url="http://localhost:8000")  # loopback: the Host allowlist is on
    key = sorted(os.listdir(photos))[0]
    r = c.post("/search", json={"image": _b64_png(photos / key), "k": 3})
    assert r.status_code == 200
    top = r.json()["results"][0]
    assert top["key"] == key and top["score"] > 0.99
    stats = c.get("/stats").json()
    assert stats["token_merge"]["r"] == 2 and stats["index_token_merge"] is None
    # without the flag the server uses the index's record
    c = TestClient(create_app(builds["r2"], reload_interval=None))
    assert c.get("/stats").json()["token_merge"]["r"] == 2
    r = c.post("/search", json={"image": _b64_png(photos / key), "k": 1})
    assert r.json()["results"][0]["key"] == key and r.json()["results"][0]["score"] > 0.999


def test_cli_build_info_update(photos, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", f"files:{photos}", "-m", "tiny", "-o", str(out), "--workers", "0",
                 "--token-merge", "2", "--merge-method", "pitome"]) == 0
    assert "token merge pitome r=2" in capsys.readouterr().out
    assert main(["index", "info", str(out)]) == 0
    assert "token merge pitome r=2" in capsys.readouterr().out
    assert main(["index", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_merge"]["method"] == "pitome"
    assert main(["index", "update", str(out), "--workers", "0", "--token-merge", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--token-merge" in err and "pitome r=2" in err and "\n" not in err
    assert main(["index", "update", str(out), "--workers", "0"]) == 0
    assert "token merge pitome r=2" in capsys.readouterr().out
