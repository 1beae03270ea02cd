"""TextEmbeddingCache: bounded LRU, concurrent callers' misses share forwards, errors reach every caller."""
import threading
import time

import numpy as np
import pytest

from clipforge.encode import TextEmbeddingCache


class SlowEncoder:
    """Deterministic vectors per text; each forward takes `delay` seconds and records its batch."""

    def __init__(self, dim=8, delay=0.0, fail_on=None):
        self.dim, self.delay, self.fail_on = dim, delay, fail_on
        self.batches: list[list[str]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def vec(self, t):
        v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim).astype(np.float32)
        return v / np.linalg.norm(v)

    def __call__(self, texts):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.batches.append(list(texts))
            time.sleep(self.delay)
            if self.fail_on is not None and self.fail_on in texts:
                raise ValueError(f"cannot encode {self.fail_on!r}")
            return np.stack([self.vec(t) for t in texts])
        finally:
            with self._lock:
                self.active -= 1


def test_results_match_the_encoder_and_repeats_are_hits():
    enc = SlowEncoder()
    cache = TextEmbeddingCache(enc, cache_size=10)
    out = cache(["a", "b", "a"])
    assert out.shape == (3, 8)
    np.testing.assert_array_equal(out, np.stack([enc.vec("a"), enc.vec("b"), enc.vec("a")]))
    assert enc.batches == [["a", "b"]]  # a text asked twice in one call is encoded once
    cache(["b"])
    assert len(enc.batches) == 1 and cache.hits >= 1
    assert cache.cached(["a", "zzz"])[1] is None


def test_lru_is_bounded_and_evicts_the_least_recently_used():
    enc = SlowEncoder()
    cache = TextEmbeddingCache(enc, cache_size=3)
    for t in ["a", "b", "c"]:
        cache([t])
    cache(["a"])  # a is now the most recent
    cache(["d"])  # evicts b
    assert len(cache) == 3
    assert cache.has_all(["a", "c", "d"]) and not cache.has_all(["b"])
    off = TextEmbeddingCache(enc, cache_size=0)
    off(["x"])
    assert len(off) == 0


def test_concurrent_misses_share_forwards_and_one_runs_at_a_time():
    enc = SlowEncoder(delay=0.05)
    cache = TextEmbeddingCache(enc, cache_size=100, max_batch=64)
    n = 16
    results: dict = {}
    start = threading.Barrier(n)

    def caller(i):
        start.wait()
        results[i] = cache([f"query {i}"])[0]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == n
    for i in range(n):
        np.testing.assert_array_equal(results[i], enc.vec(f"query {i}"))
    assert enc.max_active == 1  # never two forwards at once
    assert sum(len(b) for b in enc.batches) == n  # every text encoded exactly once
    # 16 callers released together while each forward sleeps: the texts that queue up meanwhile go together
    assert len(enc.batches) < n
    assert cache.stats()["mean_batch"] > 1


def test_max_batch_caps_a_forward():
    enc = SlowEncoder()
    cache = TextEmbeddingCache(enc, max_batch=4)
    cache([f"t{i}" for i in range(10)])
    assert max(len(b) for b in enc.batches) <= 4 and sum(len(b) for b in enc.batches) == 10


def test_a_failing_text_raises_in_its_callers_and_is_not_cached():
    enc = SlowEncoder(fail_on="bad")
    cache = TextEmbeddingCache(enc)
    with pytest.raises(ValueError, match="bad"):
        cache(["good", "bad"])
    assert not cache.has_all(["bad"])
    enc.fail_on = None
    np.testing.assert_array_equal(cache(["bad"])[0], enc.vec("bad"))  # retried, and works now
    with pytest.raises(ValueError):
        TextEmbeddingCache(enc, cache_size=-1)
