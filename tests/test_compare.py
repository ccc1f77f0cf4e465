"""The paired block bootstrap: intervals that cover, and 'within noise' when they should."""

from __future__ import annotations

import numpy as np

from sweeper.compare import block_length, paired_bootstrap


def test_clear_difference_is_not_noise_and_identical_is() -> None:
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, size=400)
    better = a - 0.5
    c = paired_bootstrap(better, a, "crps")
    assert c.high < 0 and not c.within_noise and c.diff == np.float64(-0.5)
    same = paired_bootstrap(a, a.copy(), "crps")
    assert same.within_noise and same.diff == 0


def test_interval_covers_true_mean_difference_of_correlated_series() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(60):
        noise = np.convolve(rng.normal(size=520), np.ones(20) / 20, mode="valid")[:500]  # strongly autocorrelated
        c = paired_bootstrap(noise + 0.05, np.zeros(500), "crps", n_boot=500, seed=int(rng.integers(1e6)))
        covered += c.low <= 0.05 <= c.high
    assert covered >= 45  # nominal 95%; blocks keep the autocorrelation, iid resampling would cover far less


def test_block_length_follows_the_dependence_and_keeps_the_horizon() -> None:
    rng = np.random.default_rng(2)
    iid = rng.normal(size=1000)
    ar = np.zeros(1000)
    for t in range(1, 1000):
        ar[t] = 0.8 * ar[t - 1] + iid[t]
    assert block_length(iid, 1) <= 3 < block_length(ar, 1)  # Politis-White: longer blocks for persistence
    assert block_length(iid, 24) == 24  # never shorter than one horizon's overlap
