"""Paired comparisons over origins with a moving-block bootstrap interval.

Neighbouring origins share most of their context and, for H > 1, targets, so their score differences
are correlated; resampling blocks of consecutive origins keeps that correlation in the interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 2000


@dataclass(frozen=True)
class Comparison:
    """a - b on one metric: the mean difference over origins and its bootstrap interval."""

    metric: str
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    origins: int
    block: int

    @property
    def within_noise(self) -> bool:
        """The interval holds zero (up to float rounding: equal forecasts scored two ways differ by 1e-16)."""
        eps = 1e-9 * max(abs(self.mean_a), abs(self.mean_b))
        return self.low <= eps and self.high >= -eps

    def to_dict(self) -> dict:
        return {**asdict(self), "within_noise": self.within_noise}


def block_length(n: int, horizon: int) -> int:
    return max(horizon, int(np.ceil(n ** (1 / 3))))


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, metric: str, horizon: int = 1, seed: int = 0, n_boot: int = N_BOOT
) -> Comparison:
    ok = np.isfinite(a) & np.isfinite(b)
    d = (a - b)[ok]
    n = d.size
    if n == 0:
        nan = float("nan")
        return Comparison(metric, nan, nan, nan, nan, nan, 0, 0)
    block = min(block_length(n, horizon), n)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(n_boot, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Comparison(metric, float(a[ok].mean()), float(b[ok].mean()), float(d.mean()), float(lo), float(hi), n, block)
