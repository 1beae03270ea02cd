"""No path oracle: over HTTP a filter cannot name a column that responses hide (`path`, `__url__`), under any
spelling the filter parser accepts, so its answer cannot depend on the server's directory layout. The rule is
the library's (`hidden_columns` / `hidden`), so Python and CLI users keep filtering on paths."""
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from clipforge.errors import UsageError
from clipforge.retrieval.index_searcher import IndexSearcher
from clipforge.retrieval.filters import filter_mask, parse_filter
from clipforge.serve.app import HIDDEN_COLUMNS, create_app

KEY = "k"
H = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def client(photos_index):
    return TestClient(create_app(photos_index, api_key=KEY, reload_interval=None))


def test_a_path_filter_is_a_422_that_does_not_depend_on_the_path(client, photos_demo):
    real = photos_demo["images_dir"]
    answers = set()
    for f in (f"path~{real}/*", "path~/nonexistent/*", f"path={real}/astronaut.png", "path=/nope.png"):
        r = client.post("/search", json={"text": "a photo", "filters": [f]}, headers=H)
        assert r.status_code == 422, (f, r.text[:200])
        answers.add(r.json()["error"]["message"])
    assert answers == {"filters[0]: column 'path' is not filterable here: it is not shown in results"}


@pytest.mark.parametrize("spelled", ["PATH", "Path", " path ", "__url__", "__URL__"])
def test_every_spelling_is_refused_and_named(client, spelled):
    r = client.post("/search", json={"text": "a photo", "filters": [f"{spelled}~*"]}, headers=H)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "not filterable" in message and repr(spelled.strip()) in message


def test_the_schema_and_stats_say_so_and_other_filters_work(client):
    spec = client.get("/openapi.json").json()
    doc = spec["components"]["schemas"]["SearchIn"]["properties"]["filters"]["description"]
    assert all(c in doc for c in HIDDEN_COLUMNS) and "Not filterable" in doc
    columns = client.get("/stats", headers=H).json()["columns"]
    assert "key" in columns and not set(HIDDEN_COLUMNS) & set(columns)
    r = client.post("/search", json={"text": "a photo", "k": 50, "filters": ["key~astro*"]}, headers=H)
    assert r.status_code == 200 and [h["key"] for h in r.json()["results"]] == ["astronaut.png"]


def test_python_users_keep_path_filters_and_the_engine_enforces_hidden_ones(photos_index, photos_demo):
    glob = f"path~{photos_demo['images_dir']}/astro*"
    hits = IndexSearcher(photos_index).search("a photo", k=50, filters=[glob])
    assert [h.metadata["key"] for h in hits] == ["astronaut.png"] and "path" in hits[0].metadata
    hidden = IndexSearcher(photos_index, hidden_columns=HIDDEN_COLUMNS)  # no route can forget it
    with pytest.raises(UsageError, match="'path' is not filterable"):
        hidden.search("a photo", filters=[glob])
    with pytest.raises(UsageError, match="not filterable"):  # or add one per search
        IndexSearcher(photos_index).search("a photo", filters=["caption*=a"], hidden_columns=["caption"])


def test_the_path_alias_cannot_reach_a_hidden_column():
    t = pa.table({"id": [1, 2], "image_path": ["/srv/a.png", "/tmp/b.png"], "caption": ["a", "b"]})
    assert filter_mask(t, ["path~/tmp/*"]).tolist() == [False, True]  # `path` stands for image_path here
    with pytest.raises(UsageError, match=r"'image_path' is not filterable here \(`path` stands for it"):
        filter_mask(t, ["path~/tmp/*"], hidden=("image_path",))
    with pytest.raises(UsageError, match="not filterable"):
        parse_filter("ＰＡＴＨ=x".replace("Ｐ", "P", 1), hidden=("path",))  # compatibility forms fold
    with pytest.raises(UsageError) as e:
        filter_mask(t, ["nope=1"], hidden=("image_path",))
    assert "image_path" not in str(e.value)  # an unknown-column error does not list hidden ones
