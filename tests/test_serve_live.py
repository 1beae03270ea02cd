"""The service over a changing index: DELETE /items/{id} behind the API key, and a running app that reflects
`index delete` / `index update` run by another process within a second."""
import base64
import io
import json
import os
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.retrieval.build import update_index
from clipforge.retrieval.index_dir import INFO_FILE
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.serve.app import Limits, create_app

KEY = "live-key"


@pytest.fixture
def idx(writable_photos_index):
    return writable_photos_index


def _keys(client, headers=None):
    r = client.post("/search", json={"text": "a photo", "k": 50}, headers=headers or {})
    assert r.status_code == 200, r.text
    return {h["key"]: h["id"] for h in r.json()["results"]}


def _wait_for(cond, limit=5.0):
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < limit:
        time.sleep(0.02)
    return time.monotonic() - t0


def test_delete_item_needs_the_key_and_removes_it_everywhere(idx):
    app = create_app(idx, api_key=KEY, limits=Limits(), reload_interval=None)
    h = {"X-API-Key": KEY}
    with TestClient(app) as c:
        keys = _keys(c, h)
        victim = keys["coins.png"]
        assert c.delete(f"/items/{victim}").status_code == 401  # no key: refused before anything runs
        assert c.delete(f"/items/{victim}", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get(f"/items/{victim}", headers=h).status_code == 200
        r = c.delete(f"/items/{victim}", headers=h)
        assert r.status_code == 200 and r.json()["deleted"] == [victim] and r.json()["count"] == len(keys) - 1
        assert c.get(f"/items/{victim}", headers=h).status_code == 404
        assert victim not in _keys(c, h).values()
        assert c.post("/search", json={"like": victim}, headers=h).status_code == 404  # no such item now
        again = c.delete(f"/items/{victim}", headers=h)
        assert again.status_code == 404 and again.json()["error"]["status"] == 404
        assert c.delete("/items/-1", headers=h).status_code == 422
        assert c.get("/stats", headers=h).json()["deletes"] == 1
    assert victim not in {x.id for x in IndexSearcher(idx).search("a photo", k=50)}  # on disk, not only in memory


def test_delete_without_an_api_key_is_forbidden(idx):
    with TestClient(create_app(idx, reload_interval=None)) as c:
        victim = _keys(c)["coins.png"]
        r = c.delete(f"/items/{victim}")
        assert r.status_code == 403 and "API key" in r.json()["error"]["message"]
        assert victim in _keys(c).values()


_DELETE = "import sys; from clipforge.retrieval.delete import delete_items; " \
          "delete_items(sys.argv[1], ids=[int(sys.argv[2])])"


def test_running_server_reflects_a_delete_and_an_update_within_a_second(idx, photos_demo):
    app = create_app(idx, reload_interval=0.1)
    with TestClient(app) as c:
        keys = _keys(c)
        victim = keys["grass.png"]
        # a delete by another process (what `clipforge index delete` does)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        subprocess.run([sys.executable, "-c", _DELETE, str(idx), str(victim)], env=env, check=True, timeout=120)
        took = _wait_for(lambda: victim not in _keys(c).values())
        assert victim not in _keys(c).values() and c.get(f"/items/{victim}").status_code == 404
        assert took < 1.0, took
        # an update: a new file in the source
        src = json.loads((idx / INFO_FILE).read_text())["source"].split(":", 1)[1]
        img = Image.open(os.path.join(photos_demo["images_dir"], "rocket.png")).transpose(Image.FLIP_LEFT_RIGHT)
        img.save(os.path.join(src, "rocket-flipped.png"))
        update_index(idx, workers=0, progress=False)
        took = _wait_for(lambda: "rocket-flipped.png" in _keys(c))
        new = _keys(c)
        assert "rocket-flipped.png" in new and took < 1.0, took
        assert c.get(f"/items/{new['rocket-flipped.png']}").json()["key"] == "rocket-flipped.png"
        assert c.get("/stats").json()["reloads"] >= 2


def _png_b64(path):
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_classify_endpoint_matches_the_zero_shot_head(photos_index, photos_demo):
    import torch

    from clipforge.zeroshot.zeroshot_head import build_classifier
    from clipforge.zeroshot.templates import get_templates

    eng = IndexSearcher(photos_index)
    app = create_app(photos_index, api_key=KEY, searcher=eng, limits=Limits(max_labels=5, max_label_chars=30),
                     reload_interval=None)
    c = TestClient(app)
    h = {"X-API-Key": KEY}
    path = os.path.join(photos_demo["images_dir"], "chelsea.png")
    labels = ["a cat", "a rocket", "a cup of coffee"]
    r = c.post("/classify", json={"image": _png_b64(path), "labels": labels, "templates": "photo"}, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert sorted(out["labels"]) == sorted(labels) and abs(sum(out["probabilities"]) - 1) < 1e-4
    assert out["probabilities"] == sorted(out["probabilities"], reverse=True)
    # the same numbers as the library's zero-shot head on the same model
    head = build_classifier(eng.encode_text_uncached, labels, get_templates("photo"), progress=False)
    probs = head.probs(torch.from_numpy(eng.encode_image([path])))[0]
    want = {lab: float(p) for lab, p in zip(labels, probs)}
    for lab, p in zip(out["labels"], out["probabilities"]):
        assert abs(p - want[lab]) < 1e-4
    # the same discipline as /search: auth first, limits, one JSON error shape, no server paths
    assert c.post("/classify", json={"image": "x", "labels": ["a"]}).status_code == 401
    bad = [({"image": _png_b64(path), "labels": []}, 422),
           ({"image": _png_b64(path), "labels": ["x"] * 6}, 422),  # over max_labels
           ({"image": _png_b64(path), "labels": ["y" * 31]}, 422),  # over max_label_chars
           ({"image": _png_b64(path), "labels": ["a", "a"]}, 422),  # duplicates
           ({"image": _png_b64(path), "labels": ["a"], "templates": "/etc/passwd"}, 422),  # names only
           ({"image": "not base64!!", "labels": ["a"]}, 422),  # the schema's base64 pattern
           ({"image": base64.b64encode(b"not an image").decode(), "labels": ["a"]}, 400),
           ({"image": _png_b64(path), "labels": ["a"], "extra": 1}, 422)]
    for body, status in bad:
        r = c.post("/classify", json=body, headers=h)
        assert r.status_code == status, (body.get("labels"), r.text)
        assert r.json()["error"]["status"] == status and "/tmp" not in r.text
    assert c.post("/search", json={"text": "a cat", "k": 3}, headers=h).status_code == 200


def test_worker_processes_build_the_same_app_from_the_environment(photos_index, monkeypatch):
    """`clipforge serve --workers N`: each worker builds its app from $CLIPFORGE_SERVE_CONFIG (uvicorn factory)."""
    from dataclasses import asdict

    from clipforge.serve.app import SERVE_ENV, app_from_env

    monkeypatch.setenv(SERVE_ENV, json.dumps({"index_dir": str(photos_index), "limits": asdict(Limits(max_k=7)),
                                              "reload_interval": None}))
    monkeypatch.setenv("CLIPFORGE_API_KEY", KEY)
    c = TestClient(app_from_env())
    assert c.post("/search", json={"text": "a cat", "k": 3}).status_code == 401  # the key came along
    r = c.post("/search", json={"text": "a cat", "k": 3}, headers={"X-API-Key": KEY})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    assert c.post("/search", json={"text": "a cat", "k": 8}, headers={"X-API-Key": KEY}).status_code == 422
    monkeypatch.delenv(SERVE_ENV)
    from clipforge.errors import UsageError
    with pytest.raises(UsageError):
        app_from_env()
