"""The HTTP API does what its OpenAPI schema says: every route documents the error statuses it can answer (with
the JSON error model), a 405 names the allowed methods in `Allow`, a request the schema calls valid is one the
server accepts (and the reverse: the four found by schemathesis, checked against the published schema with two
validators), and an emptied index answers 404, not 500. Under `-m slow`, schemathesis with every check."""
import base64
import collections
import io
import json
import re
import shutil

import jsonschema
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipforge.serve.app import Limits, create_app

KEY = "conformance-key"
H = {"X-API-Key": KEY}
LIMITS = Limits(max_body_bytes=200_000, max_image_pixels=1_000_000, max_k=50)


@pytest.fixture(scope="module")
def app(photos_index):
    return create_app(photos_index, api_key=KEY, limits=LIMITS, reload_interval=None)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


@pytest.fixture(scope="module")
def spec(client):
    return client.get("/openapi.json").json()


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _validators(spec, name):
    """The published request schema `name`, as Python's jsonschema (Python `re`) and jsonschema_rs (Rust regex)
    read it: two of the dialects a client may use."""
    root = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    out = [lambda body: jsonschema.Draft202012Validator(root).is_valid(body)]
    try:
        import jsonschema_rs
    except ImportError:
        return out
    out.append(jsonschema_rs.validator_for(root).is_valid)
    return out


# what each operation can answer besides 200 (401: the server has a key)
EXPECTED = {("get", "/healthz"): {400, 413, 431, 500},
            ("get", "/stats"): {400, 401, 413, 431, 500},
            ("post", "/search"): {400, 401, 404, 413, 422, 431, 500, 503},
            ("post", "/classify"): {400, 401, 413, 422, 431, 500, 503},
            ("post", "/caption"): {400, 401, 404, 413, 422, 431, 500, 503},
            ("post", "/explain"): {400, 401, 404, 413, 422, 431, 500, 503},
            ("get", "/items/{item_id}"): {400, 401, 404, 413, 422, 431, 500},
            ("delete", "/items/{item_id}"): {400, 401, 403, 404, 409, 413, 422, 431, 500, 503, 507},
            ("get", "/thumb/{item_id}"): {400, 401, 404, 413, 422, 431, 500}}


def test_every_route_documents_its_error_statuses_with_the_error_model(spec, photos_index):
    ops = {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()}
    assert set(ops) == set(EXPECTED)
    for key, op in ops.items():
        errors = {int(s) for s in op["responses"] if int(s) >= 400}
        assert errors == EXPECTED[key], (key, sorted(errors))
        for s in errors:
            schema = op["responses"][str(s)]["content"]["application/json"]["schema"]
            assert schema.get("$ref", "").endswith("/ErrorOut"), (key, s, schema)
            assert op["responses"][str(s)]["description"]
    err = spec["components"]["schemas"]["ErrorOut"]
    assert err["required"] == ["error"]
    keyless = TestClient(create_app(photos_index, limits=LIMITS, reload_interval=None)).get("/openapi.json").json()
    assert all("401" not in op["responses"] for item in keyless["paths"].values() for op in item.values())


def test_every_error_body_fits_the_documented_model(client, spec):
    model = {"$ref": "#/components/schemas/ErrorOut", "components": spec["components"]}
    for method, url, body in (("get", "/stats", None), ("get", "/items/999999", None), ("get", "/items/x", None),
                              ("post", "/search", {"image": "AAAA"}), ("delete", "/items/999999", None)):
        r = client.request(method, url, json=body, headers=H if url != "/stats" else {})
        assert r.status_code >= 400
        jsonschema.validate(r.json(), model)
        documented = spec["paths"][re.sub(r"/items/[^/]+$", "/items/{item_id}", url)][method]["responses"]
        assert str(r.status_code) in documented, (url, r.status_code)


@pytest.mark.parametrize("method", ["TRACE", "PUT", "PATCH", "OPTIONS"])
def test_405_names_exactly_the_methods_of_the_path(client, spec, method):
    for path, url in (("/healthz", "/healthz"), ("/items/{item_id}", "/items/3"), ("/search", "/search"),
                      ("/thumb/{item_id}", "/thumb/3")):
        r = client.request(method, url, headers=H)
        assert r.status_code == 405 and r.json()["error"]["status"] == 405
        allowed = {m.strip().lower() for m in r.headers["allow"].split(",")}
        assert allowed == set(spec["paths"][path]), (url, r.headers["allow"])


def test_the_four_rejected_requests_are_outside_the_schema_and_their_fixes_inside(client, spec):
    """Found by schemathesis: schema-valid requests the server refused. Now the schema refuses them too, and a
    request one character away from each is valid for both."""
    search, classify = _validators(spec, "SearchIn"), _validators(spec, "ClassifyIn")
    good = _png_b64()
    cases = [  # (validators, url, refused body, accepted body)
        (classify, "/classify", {"image": "", "labels": ["cat"]}, {"image": good, "labels": ["cat"]}),
        (classify, "/classify", {"image": good, "labels": ["\x85"]}, {"image": good, "labels": ["\x85a"]}),
        (search, "/search", {"text": "a cat", "rerank": True}, {"text": "a cat", "rerank": False}),
        (search, "/search", {"image": "not base64!!"}, {"image": good}),
        (search, "/search", {"image": good[:-1]}, {"image": "data:image/png;base64," + good}),  # padding
    ]
    for validators, url, bad, ok in cases:
        for valid in validators:
            assert not valid(bad), bad
            assert valid(ok), ok
        r = client.post(url, json=bad, headers=H)
        assert r.status_code == 422 and r.json()["error"]["status"] == 422, (bad, r.text[:200])
        r = client.post(url, json=ok, headers=H)
        assert r.status_code == 200, (ok, r.text[:200])


def test_what_the_schema_cannot_say_has_a_documented_status(client, spec):
    """Base64 of bytes that are no image: 400; an item id no item has (even past int64): 404."""
    r = client.post("/classify", json={"image": base64.b64encode(b"not an image").decode(), "labels": ["a"]},
                    headers=H)
    assert r.status_code == 400 and "not a readable image" in r.json()["error"]["message"]
    for like in (999_999, 2**63 - 1, 2**63, 2**70):
        r = client.post("/search", json={"like": like}, headers=H)
        assert r.status_code == 404 and f"no item with id {like}" in r.json()["error"]["message"]
    search = _validators(spec, "SearchIn")
    for body in ({}, {"text": " \u3000\x85"}, {"terms": [{"text": "a", "image": _png_b64()}]}, {"terms": [{}]}):
        assert not any(valid(body) for valid in search), body
        assert client.post("/search", json=body, headers=H).status_code == 422, body


def test_item_ids_past_int64_are_outside_the_schema(client, spec):
    pattern = next(p for p in spec["paths"]["/items/{item_id}"]["get"]["parameters"] if p["name"] == "item_id")
    rx = re.compile(pattern["schema"]["pattern"])
    for raw, inside in (("0", True), ("9223372036854775807", True), ("9223372036854775808", False),
                        ("9999999999999999999", False), ("1" * 19, True), ("0" * 19, True), ("１", False)):
        assert bool(rx.search(raw)) == inside, raw
        status = client.get(f"/items/{raw}", headers=H).status_code
        assert (status == 422) == (not inside), (raw, status)


def test_an_emptied_index_answers_404_not_500(photos_index, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(photos_index, idx)
    c = TestClient(create_app(idx, api_key=KEY, limits=LIMITS, reload_interval=None))
    ids = [h["id"] for h in c.post("/search", json={"text": "a photo", "k": 50}, headers=H).json()["results"]]
    assert ids
    for i in ids:
        assert c.delete(f"/items/{i}", headers=H).status_code == 200
    for method, url in (("get", f"/items/{ids[0]}"), ("delete", f"/items/{ids[0]}"), ("get", "/items/123456")):
        r = c.request(method, url, headers=H)
        assert r.status_code == 404, (method, url, r.status_code, r.text[:200])
    r = c.post("/search", json={"text": "a photo"}, headers=H)
    assert r.status_code == 200 and r.json()["results"] == []


# ---- schemathesis, every check ------------------------------------------------------------------------

# What a schema cannot say, answered with a documented status (REASONS in serve/responses.py): bytes that are
# no image, a filter naming a column the index lacks or a glob that does not compile or a non-number for a
# numeric column, query text whose terms cancel out or break the query language, and a caption asked of a model
# without a caption decoder. Any other 400 / 422 for
# a schema-valid request (a validator's message) is a disagreement between the schema and the server.
SEMANTIC = re.compile(r"not a readable image|filter on unknown column|not a valid glob|column is numeric|"
                      r"terms cancel out|query error at column|empty query|model cannot caption")


@pytest.mark.slow
def test_schemathesis_all_checks_in_process(photos_index, tmp_path):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.engine import events, from_schema

    idx = tmp_path / "idx"  # stateful runs really delete
    shutil.copytree(photos_index, idx)
    app = create_app(idx, api_key=KEY, limits=LIMITS, reload_interval=None)
    config = schemathesis.Config.from_str("""
continue-on-failure = true
[checks]
enabled = true
[generation]
max-examples = 60
[phases.stateful]
enabled = true
[[operations]]
include-name = "POST /search"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "429", "400", "422"]
[[operations]]
include-name = "POST /classify"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "429", "400"]
[[operations]]
include-name = "POST /caption"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "429", "400", "422"]
[[operations]]
include-name = "POST /explain"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "429", "400", "422"]
""")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    schema.config.update(headers=H)
    failures, statuses, semantic = collections.Counter(), collections.Counter(), collections.Counter()
    for event in from_schema(schema).execute():
        assert not isinstance(event, (events.FatalError, events.NonFatalError)), event
        if not isinstance(event, events.ScenarioFinished):
            continue
        rec = event.recorder
        for case_id, checks in rec.checks.items():
            for check in checks:
                if check.failure_info is not None:
                    f = check.failure_info.failure
                    failures[(rec.label, f.title, f.message.splitlines()[0][:120])] += 1
        for case_id, interaction in rec.interactions.items():
            case, response = rec.cases[case_id].value, interaction.response
            if response is None or case.meta is None:
                continue
            statuses[response.status_code] += 1
            if case.meta.generation.mode.is_positive and response.status_code in (400, 422):
                message = json.loads(response.content)["error"]["message"]
                assert SEMANTIC.search(message), (rec.label, case.body, message)
                semantic[SEMANTIC.search(message).group(0)] += 1
    assert not failures, failures.most_common(20)
    assert statuses[200] > 50 and sum(statuses.values()) > 500, statuses
