"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis): requests that fit the
schema and requests that break it, for every operation. Asserted: no 5xx, no response slower than a bound,
the server alive and answering real searches afterwards. A bounded number of examples runs in the normal
suite (in-process ASGI); many more, against a real `clipforge serve` on loopback, under `-m slow`."""
import os
import socket
import subprocess
import sys
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402

from clipforge.serve.app import PUBLIC_PATHS, Limits, create_app  # noqa: E402

KEY = "fuzz-key"
MAX_RESPONSE_S = 10.0  # generous for a busy 2-core machine; a real request here takes milliseconds
LIMITS = Limits(max_body_bytes=200_000, max_image_pixels=1_000_000, max_k=50)


@pytest.fixture(scope="module")
def index_dir(photos_index, tmp_path_factory):
    """A private copy: the fuzzer's DELETE /items/{id} calls really delete."""
    import shutil

    out = tmp_path_factory.mktemp("fuzz") / "idx"
    shutil.copytree(photos_index, out)
    return out


@pytest.fixture(scope="module")
def app(index_dir):
    return create_app(index_dir, api_key=KEY, limits=LIMITS)


def _strategy(schema, mode):
    ops = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in ops} >= {"POST /search", "GET /items/{item_id}",
                                                                 "GET /thumb/{item_id}", "POST /classify",
                                                                 "DELETE /items/{item_id}"}
    return st.one_of([op.as_strategy(generation_mode=mode) for op in ops])


def _fuzz(schema, mode, n: int, call, seen: dict) -> None:
    @given(case=_strategy(schema, mode))
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        t = time.perf_counter()
        r = call(case)
        dt = time.perf_counter() - t
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (case.method, case.formatted_path, str(case.body)[:300], r.text[:300])
        assert dt < MAX_RESPONSE_S, (case.method, case.formatted_path, str(case.body)[:300], dt)
        if r.status_code >= 400:  # every error has the same JSON shape
            assert r.json()["error"]["status"] == r.status_code

    run()


def _assert_alive(get, post):
    assert get("/healthz").status_code == 200
    r = post("/search", {"text": "a photo of a cat", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_api_in_process(app, mode):
    from fastapi.testclient import TestClient

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: dict = {}
    _fuzz(schema, mode, 60, lambda case: case.call(headers={"X-API-Key": KEY}), seen)
    assert sum(seen.values()) >= 30
    c = TestClient(app)
    _assert_alive(lambda u: c.get(u), lambda u, b: c.post(u, json=b, headers={"X-API-Key": KEY}))


def test_fuzz_without_the_key_is_always_401(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    public = {p for p in PUBLIC_PATHS}

    @given(case=_strategy(schema, GenerationMode.NEGATIVE))
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        r = case.call()
        if case.path not in public:
            assert r.status_code == 401, (case.method, case.formatted_path, r.text[:200])

    run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fuzz_api_on_loopback_uvicorn(index_dir):
    """`clipforge serve` in its own process: 1,000 examples per mode, oversized headers, then alive."""
    import requests

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "clipforge", "serve", str(index_dir), "--port", str(port),
                             "--api-key", KEY, "--max-k", "50"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        schema = schemathesis.openapi.from_url(base + "/openapi.json")
        session = requests.Session()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            seen: dict = {}
            _fuzz(schema, mode, 1000, lambda case: case.call(base_url=base, session=session,
                                                             headers={"X-API-Key": KEY}, timeout=30), seen)
        # oversized heads are refused: 431 from the app, or a reset from uvicorn for ones beyond its read size
        for n in (20_000, 65_536, 1_000_000):
            try:
                r = requests.get(base + "/healthz", headers={"X-Big": "a" * n}, timeout=10)
                assert r.status_code == 431, (n, r.status_code)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                pass  # uvicorn resets a connection whose head is beyond its read size: also a refusal
        _assert_alive(lambda u: requests.get(base + u, timeout=10),
                      lambda u, b: requests.post(base + u, json=b, headers={"X-API-Key": KEY}, timeout=30))
        assert proc.poll() is None
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1].decode(errors="replace")
    assert "Traceback" not in err, err[-3000:]
