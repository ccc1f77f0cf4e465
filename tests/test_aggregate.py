"""Aggregations against scipy and hand-worked cases, for any sample count and horizon."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.stats import mstats

from sweeper.aggregate import aggregate

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 101, 256])
@pytest.mark.parametrize("h", [1, 5])
def test_against_scipy(n: int, h: int) -> None:
    x = RNG.standard_t(3, size=(4, n, h))
    np.testing.assert_allclose(aggregate(x, "mean"), x.mean(axis=1))
    np.testing.assert_allclose(aggregate(x, "median"), np.median(x, axis=1))
    for p in (5, 10, 20, 2.5, 49):
        np.testing.assert_allclose(aggregate(x, f"trimmed_mean_{p}"), stats.trim_mean(x, p / 100, axis=1))
        want = np.array(
            [[mstats.winsorize(x[b, :, j], limits=(p / 100, p / 100)).mean() for j in range(h)] for b in range(4)]
        )
        np.testing.assert_allclose(aggregate(x, f"winsorized_mean_{p}"), want)
    for q in (0.1, 0.5, 0.9):
        np.testing.assert_allclose(aggregate(x, f"quantile_{q}"), np.quantile(x, q, axis=1))


def test_hand_worked() -> None:
    x = np.array([1.0, 2, 3, 4, 100, 5, 6, 7, 8, -50]).reshape(1, 10, 1)
    # 10% per tail of 10 samples: drop -50 and 100
    assert aggregate(x, "trimmed_mean_10")[0, 0] == pytest.approx(4.5)
    # winsorized: -50 -> 1, 100 -> 8
    assert aggregate(x, "winsorized_mean_10")[0, 0] == pytest.approx((1 + 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 8) / 10)
    # 5% of 10 samples is 0.5 -> floor 0: nothing cut (as scipy)
    assert aggregate(x, "trimmed_mean_5")[0, 0] == pytest.approx(x.mean())
    # trimmed_mean_1 means 1% per tail, not 100%
    assert aggregate(x, "trimmed_mean_1")[0, 0] == pytest.approx(x.mean())


def test_shape_is_origins_by_horizon_even_when_samples_below_horizon() -> None:
    x = RNG.normal(size=(3, 2, 24))
    for name in ("mean", "median", "trimmed_mean_20", "winsorized_mean_20", "quantile_0.3"):
        assert aggregate(x, name).shape == (3, 24)
