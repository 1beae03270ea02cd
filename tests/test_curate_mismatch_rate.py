"""The mismatch-rate estimate: the share of a scored set's pairs that do not match, from clean scores alone."""
import numpy as np
import pytest

from clipforge.curate import estimate_mismatch_rate
from clipforge.errors import UsageError


def mixture(rate: float, n: int, seed: int):
    rng = np.random.default_rng(seed)
    bad = rng.random(n) < rate
    scores = np.where(bad, rng.normal(0.1, 0.08, n), rng.normal(0.7, 0.1, n))
    return scores, rng.normal(0.7, 0.1, 4000), float(bad.mean())


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.4, 0.7])
def test_the_estimate_finds_the_planted_rate(rate):
    scores, clean, true = mixture(rate, 20000, seed=int(rate * 10))
    est = estimate_mismatch_rate(scores, clean, keep_clean=0.9)
    assert est["rate"] == pytest.approx(true, abs=0.02)
    assert est["pairs"] == 20000 and 0.0 <= est["below"] <= 1.0


def test_mismatched_pairs_above_the_threshold_make_it_a_lower_bound():
    rng = np.random.default_rng(3)
    clean = rng.normal(0.7, 0.1, 4000)
    good, hidden = rng.normal(0.7, 0.1, 7000), rng.normal(0.7, 0.1, 3000)  # 30% mismatched, scored like clean
    est = estimate_mismatch_rate(np.r_[good, hidden], clean)
    assert est["rate"] < 0.05  # invisible to the scorer: not counted


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(UsageError, match="no scored pairs"):
        estimate_mismatch_rate([np.nan], [0.5, 0.6])
    with pytest.raises(UsageError, match="keep_clean"):
        estimate_mismatch_rate([0.5], [0.5], keep_clean=1.0)
