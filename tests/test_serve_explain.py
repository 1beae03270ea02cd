"""POST /explain (issue 29): maps as arrays, the figure, or an overlay for the page; /search's limits."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.explain import explain
from clipforge.serve.app import Limits, create_app
from test_serve import engine, index_dir  # noqa: F401  (the served index and its searcher, built once)


@pytest.fixture(scope="module")
def client(index_dir, engine):  # noqa: F811
    limits = Limits(max_body_bytes=200_000, max_image_pixels=1_000_000, max_terms=3, max_query_chars=50)
    return TestClient(create_app(index_dir, limits=limits, searcher=engine, reload_interval=None))


def _b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _image() -> Image.Image:
    arr = np.zeros((40, 56, 3), np.uint8)
    arr[4:20, 30:50] = 255
    return Image.fromarray(arr)


def test_arrays_equal_the_python_call(client, engine):  # noqa: F811
    r = client.post("/explain", json={"image": _b64(_image()), "texts": ["a white box", "a dog"]})
    assert r.status_code == 200, r.text
    got = r.json()
    want = explain(engine.encoder, _image(), ["a white box", "a dog"])
    assert got["grid"] == [8, 8] and got["image_size"] == [56, 40] and got["method"] == "maskclip"
    assert np.allclose(np.array(got["maps"]), want.maps, atol=1e-4)
    assert np.allclose(got["scores"], want.scores, atol=1e-5)


def test_the_figure_and_the_overlay_of_an_indexed_item(client):
    r = client.post("/explain", json={"image": _b64(_image()), "texts": ["a"], "format": "png",
                                      "method": "gradcam"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    item = client.post("/search", json={"text": "a photo", "k": 1}).json()["results"][0]
    r = client.post("/explain", json={"id": item["id"], "texts": ["a photo"], "format": "overlay"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.mode == "RGBA" and max(im.size) <= 256


@pytest.mark.parametrize("body,status,says", [
    ({"texts": ["a"]}, 422, "exactly one of"),                                 # no image
    ({"id": 10 ** 9, "texts": ["a"]}, 404, "no item"),                         # an id the index lacks
    ({"image": "AAAA", "texts": ["a"]}, 400, "not a readable image"),         # not an image
    ({"image": "x", "texts": ["a"]}, 422, None),                               # not base64
    ({"texts": ["a", "b", "c", "d"], "id": 0}, 422, None),                     # over max_terms
    ({"texts": ["a" * 51], "id": 0}, 422, None),                               # over max_query_chars
    ({"texts": [" "], "id": 0}, 422, None),                                    # blank
    ({"texts": ["a"], "id": 0, "method": "attention"}, 422, None),             # unknown method
    ({"texts": ["a"], "id": 0, "path": "/etc/passwd"}, 422, None),             # unknown field
])
def test_bad_requests_are_json_errors(client, body, status, says):
    r = client.post("/explain", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["status"] == status
    if says:
        assert says in r.json()["error"]["message"]


def test_oversized_uploads_are_refused(client):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))
    r = client.post("/explain", json={"image": _b64(big), "texts": ["a"]})  # ~480 KB > 200 KB body limit
    assert r.status_code == 413
    bomb = Image.new("RGB", (1100, 1000))  # 1.1 MP > max_image_pixels, a small PNG
    r = client.post("/explain", json={"image": _b64(bomb), "texts": ["a"]})
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]
