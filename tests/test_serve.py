"""HTTP service (FastAPI TestClient): search by text / image / like / terms, items, thumbnails, stats, and
hostile requests that must get a 4xx JSON error while the server keeps serving."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.retrieval.build import build_index
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.serve.app import Limits, create_app


@pytest.fixture(scope="module")
def index_dir(photos_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "idx"
    build_index(f"files:{photos_demo['images_dir']}", "tiny", out, batch_size=8, progress=False)
    return out


@pytest.fixture(scope="module")
def engine(index_dir):
    return IndexSearcher(index_dir)


@pytest.fixture(scope="module")
def client(index_dir, engine):
    limits = Limits(max_body_bytes=200_000, max_image_pixels=1_000_000, max_k=50)
    return TestClient(create_app(index_dir, limits=limits, searcher=engine))


def _b64_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with a tiny (truncated) payload."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + \
        chunk(b"IEND", b"")


def _ok(client):
    r = client.post("/search", json={"text": "a photo", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


def test_text_search_matches_brute_force(client, engine):
    r = client.post("/search", json={"text": "a red cup", "k": 5})
    assert r.status_code == 200
    res = r.json()["results"]
    q = engine.encode_text(["a red cup"])[0]
    x, ids = engine.searcher.vectors, engine.metadata.column("id").to_numpy()
    scores = x @ q
    want = ids[np.argsort(-scores)[:5]]  # metadata and vectors share the store's row order
    assert [h["id"] for h in res] == want.tolist()
    assert [h["rank"] for h in res] == list(range(5))
    assert all("path" not in h and h["thumb"] == f"/thumb/{h['id']}" for h in res)
    assert isinstance(res[0]["captions"], list) and res[0]["key"].endswith(".png")


def test_image_query_finds_itself_and_like(client, photos_demo, engine):
    img = Image.open(f"{photos_demo['images_dir']}/rocket.png").convert("RGB")
    r = client.post("/search", json={"image": "data:image/png;base64," + _b64_png(img), "k": 3})
    assert r.status_code == 200
    top = r.json()["results"][0]
    assert top["key"] == "rocket.png" and top["score"] > 0.99
    r = client.post("/search", json={"like": top["id"], "k": 2})
    assert r.json()["results"][0]["id"] == top["id"]
    # composed + weighted terms + filters + pagination
    r = client.post("/search", json={"text": "a rocket", "terms": [{"text": "sky", "weight": 0.5},
                                                                    {"image": _b64_png(img), "weight": 0.3}],
                                     "filters": ["caption*=a"], "k": 2, "offset": 2})
    assert r.status_code == 200 and [h["rank"] for h in r.json()["results"]] == [2, 3]
    r = client.post("/search", json={"text": "x", "filters": ["key=rocket.png"]})
    assert [h["key"] for h in r.json()["results"]] == ["rocket.png"]


def test_items_thumbs_health_stats_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    item = client.get("/items/0").json()
    assert item["id"] == 0 and "key" in item
    r = client.get("/thumb/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert max(im.size) <= 256
    assert client.get("/thumb/0").content == r.content  # served from the cache
    s = client.get("/stats").json()
    assert s["count"] == 22 and s["thumbs_cached"] >= 1 and s["searches"] >= 0
    spec = client.get("/openapi.json").json()
    assert "/search" in spec["paths"] and "/thumb/{item_id}" in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "clipforge search" in page.text
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("case", ["oversized", "oversized_chunked", "bomb", "bad_b64", "not_image", "dotdot",
                                  "dotdot_encoded", "negative_id", "unknown_field", "unknown_term_field",
                                  "k_cap", "neg_offset", "img_path_term", "unknown_id", "bad_filter",
                                  "empty_query", "bad_json", "wrong_type", "term_both"])
def test_hostile_requests_get_4xx_and_server_keeps_serving(client, case):
    big = "a" * 300_000
    if case == "oversized":
        r = client.post("/search", json={"text": big})
        assert r.status_code == 413
    elif case == "oversized_chunked":
        def gen():
            for _ in range(30):
                yield b"x" * 10_000
        r = client.post("/search", content=gen(), headers={"content-type": "application/json"})
        assert r.status_code == 413
    elif case == "bomb":
        r = client.post("/search", json={"image": base64.b64encode(_bomb_png(30_000, 30_000)).decode()})
        assert r.status_code == 413 and "pixel" in r.json()["error"]["message"]
    elif case == "bad_b64":
        r = client.post("/search", json={"image": "%%%not base64!!"})
        assert r.status_code == 422 and "base64" in r.json()["error"]["message"]  # the schema's pattern
    elif case == "not_image":
        r = client.post("/search", json={"image": base64.b64encode(b"hello world").decode()})
        assert r.status_code == 400
    elif case == "dotdot":
        r = client.get("/thumb/../../etc/passwd")
        assert r.status_code == 404
    elif case == "dotdot_encoded":
        for url in ("/thumb/..%2F..%2Fetc%2Fpasswd", "/items/..%2Fmanifest.json", "/thumb/%2Fetc%2Fpasswd"):
            r = client.get(url)
            assert r.status_code in (404, 422), url
            assert "root:" not in r.text
    elif case == "negative_id":
        r = client.get("/thumb/-1")
        assert r.status_code == 422
    elif case == "unknown_field":
        r = client.post("/search", json={"text": "cat", "path": "/etc/passwd"})
        assert r.status_code == 422 and "path: unknown field" in r.json()["error"]["message"]
    elif case == "unknown_term_field":
        r = client.post("/search", json={"terms": [{"file": "/etc/passwd"}]})
        assert r.status_code == 422
    elif case == "k_cap":
        r = client.post("/search", json={"text": "cat", "k": 10_000})
        assert r.status_code == 422 and "limit" in r.json()["error"]["message"]
    elif case == "neg_offset":
        r = client.post("/search", json={"text": "cat", "offset": -1})
        assert r.status_code == 422
    elif case == "img_path_term":
        r = client.post("/search", json={"text": "img:/etc/passwd"})
        assert r.status_code == 422 and "not allowed" in r.json()["error"]["message"]
    elif case == "unknown_id":
        assert client.get("/items/999999").status_code == 404
        r = client.post("/search", json={"like": 999999})
        assert r.status_code == 404  # an unknown item, as for /items/{id}
    elif case == "bad_filter":
        r = client.post("/search", json={"text": "cat", "filters": ["nosuchcolumn=1"]})
        assert r.status_code == 422 and "unknown column" in r.json()["error"]["message"]
    elif case == "empty_query":
        r = client.post("/search", json={"k": 3})
        assert r.status_code == 422
    elif case == "bad_json":
        r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
    elif case == "wrong_type":
        r = client.post("/search", json={"text": "cat", "k": "many"})
        assert r.status_code == 422
    elif case == "term_both":
        r = client.post("/search", json={"terms": [{"text": "a", "image": "AAAA"}]})
        assert r.status_code == 422
    assert r.json()["error"]["status"] == r.status_code  # every error is the same JSON shape
    _ok(client)


def test_api_key(index_dir, engine):
    c = TestClient(create_app(index_dir, api_key="s3cret", searcher=engine))
    assert c.get("/healthz").status_code == 200  # liveness needs no key
    assert c.post("/search", json={"text": "cat"}).status_code == 401
    assert c.get("/thumb/0", headers={"X-API-Key": "wrong"}).status_code == 401
    r = c.post("/search", json={"text": "cat", "k": 2}, headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert c.get("/").status_code == 200  # the page itself loads; it asks for the key
