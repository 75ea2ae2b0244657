"""KID-EffNetLite0's estimator (metrics.kid_from_features) against a direct float64 evaluation of the unbiased
MMD^2 formula of Binkowski et al. 2018, pair by pair."""

import numpy as np
import pytest

from machinegaze import GazeError
from machinegaze.metrics import kid_from_features


def _kernel(u: np.ndarray, v: np.ndarray) -> float:
    return (float(np.dot(u, v)) / len(u) + 1.0) ** 3


def _mmd2_by_pairs(x: np.ndarray, y: np.ndarray) -> float:
    m = len(x)
    xx = sum(_kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(_kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(_kernel(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_the_unbiased_estimator_written_out():
    rng = np.random.RandomState(3)
    a = rng.randn(9, 5)
    b = rng.randn(7, 5) * 1.5 + 0.3
    # one subset holding every row of the smaller set: the estimate of those exact samples
    full = kid_from_features(a[:7], b, num_subsets=1, max_subset_size=7)
    assert full == pytest.approx(_mmd2_by_pairs(a[:7], b), rel=1e-12, abs=1e-12)
    # random subsets: the mean of the per-subset estimates, subsets drawn a-then-b from RandomState(seed)
    draw = np.random.RandomState(11)
    expected = []
    for _ in range(4):
        ia = draw.choice(len(a), 5, replace=False)
        ib = draw.choice(len(b), 5, replace=False)
        expected.append(_mmd2_by_pairs(a[ia], b[ib]))
    got = kid_from_features(a, b, num_subsets=4, max_subset_size=5, seed=11)
    assert got == pytest.approx(np.mean(expected), rel=1e-12, abs=1e-12)


def test_kid_of_a_set_with_itself_is_near_zero_and_shifts_are_positive():
    rng = np.random.RandomState(0)
    a = rng.randn(40, 6)
    shifted = kid_from_features(a, a + 2.0, num_subsets=1, max_subset_size=40)
    # with itself only the diagonal pairs (excluded within a set, kept across) separate the terms: near 0
    itself = kid_from_features(a, a, num_subsets=1, max_subset_size=40)
    halves = kid_from_features(a[:20], a[20:], num_subsets=5, max_subset_size=15)
    assert shifted > 50.0
    assert abs(itself) < 0.01 * shifted and abs(halves) < 0.01 * shifted


def test_kid_needs_two_rows_per_side():
    with pytest.raises(GazeError):
        kid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
