"""Query-image decoding under load (issue 33): at most `Limits.max_concurrent_decodes` decodes at once (a request
finding every slot taken gets 503 with Retry-After, at once), and one decoded-memory budget shared by all the
images of a request (`Limits.max_decoded_bytes`). Peak memory under 6 concurrent hostile PNGs is measured by
bench/bench_serve_attacks.py, not here."""
import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.data.decode import decode_bytes
from clipforge.errors import UsageError
from clipforge.serve.app import Limits, create_app
from clipforge.serve.images import ImageDecoder

SIDE = 64


def _png_b64(seed=0, side=SIDE) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _app(photos_index, **limits):
    return create_app(photos_index, limits=Limits(**limits), reload_interval=None)


def test_a_request_finding_every_decode_slot_taken_gets_503_with_retry_after(photos_index):
    app = _app(photos_index, max_concurrent_decodes=2)
    c = TestClient(app)
    slots = app.state.images.slots
    assert c.post("/search", json={"image": _png_b64()}).status_code == 200
    for _ in range(2):  # two decodes in flight elsewhere
        assert slots.acquire(blocking=False)
    try:
        for path, body in (("/search", {"image": _png_b64()}),
                           ("/search", {"text": "a cat", "terms": [{"image": _png_b64(1)}]}),
                           ("/classify", {"image": _png_b64(), "labels": ["a cat", "a dog"]})):
            r = c.post(path, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["status"] == 503 and "decoding" in r.json()["error"]["message"]
        assert c.post("/search", json={"text": "a cat"}).status_code == 200  # text needs no decode slot
    finally:
        slots.release()
        slots.release()
    assert c.post("/search", json={"image": _png_b64()}).status_code == 200  # slots are given back
    assert c.post("/classify", json={"image": _png_b64(), "labels": ["a cat", "a dog"]}).status_code == 200
    assert c.get("/stats").json()["limits"]["max_concurrent_decodes"] == 2


def test_a_refused_or_failed_decode_gives_its_slot_back(photos_index):
    app = _app(photos_index, max_concurrent_decodes=1)
    c = TestClient(app)
    for bad in ("not base64!", base64.b64encode(b"not an image").decode()):
        assert c.post("/search", json={"image": bad}).status_code in (400, 422)
    assert c.post("/search", json={"image": _png_b64()}).status_code == 200


def test_the_images_of_one_request_share_one_budget(photos_index):
    one = decode_bytes("RGB", (SIDE, SIDE))
    c = TestClient(_app(photos_index, max_decoded_bytes=int(1.5 * one)))
    assert c.post("/search", json={"image": _png_b64()}).status_code == 200
    assert c.post("/search", json={"terms": [{"image": _png_b64(1)}]}).status_code == 200
    r = c.post("/search", json={"image": _png_b64(), "terms": [{"image": _png_b64(1)}]})
    assert r.status_code == 413 and "terms[0].image" in r.json()["error"]["message"]
    # one image over the whole budget is refused from its header, before any pixel is decoded
    r = c.post("/search", json={"image": _png_b64(side=2 * SIDE)})
    assert r.status_code == 413 and "max_decoded_bytes" in r.json()["error"]["message"]


@pytest.mark.parametrize("n", [0, -1, True, 1.5])
def test_decode_slots_must_be_a_positive_count(n):
    with pytest.raises(UsageError, match="max_concurrent_decodes"):
        ImageDecoder(Limits(max_concurrent_decodes=n))
