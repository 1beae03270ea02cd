"""Query language, term combination, filters, over-fetch, near-duplicate collapsing, pagination."""

import re

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from clipforge.errors import UsageError
from clipforge.retrieval.index import VectorIndex
from clipforge.retrieval.filters import Filter, filter_mask, parse_filter
from clipforge.retrieval.query_language import Term, compose, parse_query
from clipforge.retrieval.query_vector import embed_query
from clipforge.retrieval.searcher import Searcher


def _kw(terms):
    return [(t.kind, t.value, t.weight) for t in terms]


# ---- parser ----

def test_plain_text_needs_no_quotes():
    assert _kw(parse_query("  a golden retriever - on 3 beaches ")) == \
        [("text", "a golden retriever - on 3 beaches", 1.0)]
    assert _kw(parse_query("3 dogs")) == [("text", "3 dogs", 1.0)]


def test_weighted_and_negative_terms():
    assert _kw(parse_query('"golden retriever" + 0.5*"beach" - "indoors"')) == \
        [("text", "golden retriever", 1.0), ("text", "beach", 0.5), ("text", "indoors", -1.0)]
    assert _kw(parse_query("-'a' + \"b\" * 2 - 1e-1 * 'c'")) == \
        [("text", "a", -1.0), ("text", "b", 2.0), ("text", "c", -0.1)]
    assert _kw(parse_query(r'"say \"hi\"" + .5*text:"x"')) == [("text", 'say "hi"', 1.0), ("text", "x", 0.5)]


def test_image_terms(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "dog.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "my cat.jpg")
    terms = parse_query('img:dog.png + 0.3*"beach" - img:"my cat.jpg"', base_dir=tmp_path)
    assert [(t.kind, t.weight) for t in terms] == [("image", 1.0), ("text", 0.3), ("image", -1.0)]
    assert terms[0].value == str(tmp_path / "dog.png")
    # a quoted existing image path is an image; text: forces text; a non-existent path stays text
    assert parse_query(f'"{tmp_path / "dog.png"}"')[0].kind == "image"
    assert parse_query(f'text:"{tmp_path / "dog.png"}"')[0].kind == "text"
    assert parse_query('"nothere.png"', base_dir=tmp_path)[0].kind == "text"
    # network callers: no string may become a file read
    assert parse_query(f'"{tmp_path / "dog.png"}"', allow_paths=False)[0].kind == "text"
    with pytest.raises(UsageError, match="not allowed"):
        parse_query("img:dog.png", allow_paths=False, base_dir=tmp_path)
    with pytest.raises(UsageError, match="no image file"):
        parse_query("img:missing.jpg", base_dir=tmp_path)


@pytest.mark.parametrize("query, column, message", [
    ('"a" "b"', 5, "expected '+' or '-'"),
    ('"a" + "b', 7, "unterminated string"),
    ('"a" + 0.5 "b"', 11, "expected '*'"),
    ('"a" * ', 7, "expected a number"),
    ('2*"a"*3', 6, "one weight"),
    ('"a" + b', 7, "expected a quoted string"),
    ('text:b', 6, "quoted string after text:"),
    ('"a" +', 6, "expected a quoted string"),
])
def test_parse_errors_point_at_the_column(query, column, message):
    with pytest.raises(UsageError, match=re.escape(message)) as e:
        parse_query(query)
    assert f"column {column}:" in str(e.value)
    assert str(e.value).splitlines()[-1] == "  " + " " * (column - 1) + "^"


# ---- combining terms ----

def test_embed_query_weighted_sum_normalised(tmp_path):
    table = {"cat": [3.0, 0, 0, 0], "beach": [0, 2.0, 0, 0], "indoors": [0, 0, 1.0, 1.0]}
    seen = {}

    def encode_text(texts):
        seen.setdefault("text_calls", []).append(list(texts))
        return np.array([table[t] for t in texts])

    def encode_image(images):
        seen["images"] = [im.size for im in images]
        return np.array([[0, 0, 0, 5.0] for _ in images])

    v = embed_query(parse_query('"cat" + 0.5*"beach" - "indoors"'), encode_text, encode_image)
    want = np.array([1, 0.5, -1 / np.sqrt(2), -1 / np.sqrt(2)])  # each term normalised first
    np.testing.assert_allclose(v, want / np.linalg.norm(want), rtol=1e-6)
    assert seen["text_calls"] == [["cat", "beach", "indoors"]]  # one batched call
    Image.new("RGB", (6, 5)).save(tmp_path / "q.png")
    v = embed_query(compose(text="cat", image=(tmp_path / "q.png").read_bytes(), image_weight=2.0),
                    encode_text, encode_image)
    np.testing.assert_allclose(v, np.array([1, 0, 0, 2]) / np.sqrt(5), rtol=1e-6)
    assert seen["images"] == [(6, 5)]
    with pytest.raises(UsageError, match="cancel"):
        embed_query(parse_query('"cat" - "cat"'), encode_text)
    with pytest.raises(UsageError, match="no image encoder"):
        embed_query([Term("image", Image.new("RGB", (2, 2)))], encode_text)


# ---- filters ----

def _meta():
    return pa.table({"id": pa.array([10, 11, 12, 13, 14], pa.int64()),
                     "image_path": ["/a/beach/1.jpg", "/a/city/2.png", "/b/beach/3.jpg", None, "/b/x.jpg"],
                     "caption": ["A Dog on sand", "city at night", "dog and cat", "cat", None],
                     "width": [640, 1024, 320, 2048, 800]})


def test_filters_against_hand_computed_masks():
    t = _meta()
    assert filter_mask(t, ["path~*/beach/*"]).tolist() == [True, False, True, False, False]
    assert filter_mask(t, ["caption*=DOG"]).tolist() == [True, False, True, False, False]
    assert filter_mask(t, ["width>=800"]).tolist() == [False, True, False, True, True]
    assert filter_mask(t, ["width>=640", "width<2048", "caption*=A"]).tolist() == [True, True, False, False, False]
    assert filter_mask(t, ["caption=cat"]).tolist() == [False, False, False, True, False]
    assert filter_mask(t, ["caption!=cat"]).tolist() == [True, True, True, False, False]  # null never matches
    assert filter_mask(t, [Filter("width", "<", 700)]).tolist() == [True, False, True, False, False]
    assert parse_filter(" width >= 512 ") == Filter("width", ">=", "512")
    with pytest.raises(UsageError, match="OP one of"):
        parse_filter("width")
    with pytest.raises(UsageError, match="unknown column 'height'"):
        filter_mask(t, ["height>1"])
    with pytest.raises(UsageError, match="numeric"):
        filter_mask(t, ["width>big"])


# ---- searcher ----

def _collection(n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 2 + 100
    meta = pa.table({"id": ids, "path": [f"/p/{'even' if i % 2 == 0 else 'odd'}/{i}.jpg" for i in range(n)],
                     "n": np.arange(n)})
    return x, ids, meta, rng


def _brute(x, ids, q, keep=None):
    s = x @ q
    order = np.argsort(-s)
    if keep is not None:
        order = order[keep[order]]
    return ids[order].tolist(), s[order]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_filtered_search_returns_k_and_matches_bruteforce(kind):
    x, ids, meta, rng = _collection()
    index = VectorIndex.build(x, ids, kind=kind)
    q = x[3] + 0.1 * rng.standard_normal(16).astype(np.float32)
    q /= np.linalg.norm(q)
    keep = np.arange(400) % 2 == 1
    want, _ = _brute(x, ids, q, keep)
    for exact_max in (0, 10_000):  # over-fetch path through the index, then the exact-subset path
        s = Searcher(index, meta, x, ids)
        s.exact_subset_max = exact_max
        hits = s.search(q, k=15, filters=["path~*/odd/*"])
        assert [h.id for h in hits] == want[:15]
        assert all(h.metadata["path"].startswith("/p/odd/") for h in hits)
        assert [h.rank for h in hits] == list(range(15))
    assert Searcher(index, meta).search(q, k=5, filters=["n>=1000"]) == []


def test_pagination_is_a_slice_of_one_ranking():
    x, ids, meta, rng = _collection()
    s = Searcher(VectorIndex.build(x, ids), meta, x, ids)
    q = x[0]
    full = [h.id for h in s.search(q, k=30)]
    assert full == _brute(x, ids, q)[0][:30]
    pages = [s.search(q, k=10, offset=o) for o in (0, 10, 20)]
    assert [h.id for p in pages for h in p] == full
    assert pages[2][0].rank == 20 and pages[2][0].metadata["n"] == (pages[2][0].id - 100) // 2
    assert len(s.search(q, k=10, offset=395)) == 5  # past the end: what is left


def test_near_duplicates_collapse():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    # every vector gets two near-copies (cosine > 0.99): ids 3i, 3i+1, 3i+2 are one group
    x = np.repeat(base, 3, axis=0) + 0.01 * rng.standard_normal((150, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(150, dtype=np.int64)
    s = Searcher(VectorIndex.build(x, ids), None, x, ids)
    q = base[7]
    hits = s.search(q, k=8, dedup=0.95)
    groups = [h.id // 3 for h in hits]
    assert len(hits) == 8 and len(set(groups)) == 8  # one hit per group
    # the kept member of each group is its best-scoring one, and groups come in brute-force order
    order, _ = _brute(x, ids, q)
    want = []
    for i in order:
        if i // 3 not in [w // 3 for w in want]:
            want.append(i)
    assert [h.id for h in hits] == want[:8]
    assert [h.id for h in s.search(q, k=4, offset=4, dedup=0.95)] == want[4:8]
    assert len(s.search(q, k=3)) == 3 and len({h.id // 3 for h in s.search(q, k=3)}) < 3  # off by default
    with pytest.raises(UsageError, match="vectors"):
        Searcher(VectorIndex.build(x, ids)).search(q, k=3, dedup=0.9)
