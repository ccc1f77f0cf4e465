"""Point forecasts from samples: mean, median, trimmed_mean_P, winsorized_mean_P, quantile_Q.

P is the percent cut from EACH tail (0 < P < 50), so trimmed_mean_5 drops the lowest and highest 5%.
Q is a probability (0 < Q < 1). Samples lie on axis 1: (origins, samples, horizon).

The aggregators work on draws sorted along axis 1 (every one of them is order-free), so a trial sorts its
draws once and shares them with the sort-based metrics (`metrics.score(..., presorted=True)`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import numpy as np

from sweeper.errors import SweepError

Aggregator = Callable[[np.ndarray], np.ndarray]
_PATTERN = re.compile(r"(trimmed_mean|winsorized_mean|quantile)_(\d+(?:\.\d+)?)")


def _cut(n: int, percent: float) -> int:
    """How many samples each tail loses (floor, as scipy.stats.trim_mean); P < 50 always leaves one."""
    return int(np.floor(n * percent / 100.0 + 1e-9))


def trimmed_mean(s: np.ndarray, percent: float) -> np.ndarray:
    k = _cut(s.shape[1], percent)
    return s[:, k : s.shape[1] - k].mean(axis=1)


def winsorized_mean(s: np.ndarray, percent: float) -> np.ndarray:
    n = s.shape[1]
    k = _cut(n, percent)
    return np.clip(s, s[:, k : k + 1], s[:, n - 1 - k : n - k]).mean(axis=1)


def quantile(s: np.ndarray, q: float) -> np.ndarray:
    """numpy's default (linear) quantile, read off sorted draws without another sort."""
    pos = q * (s.shape[1] - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, s.shape[1] - 1)
    return s[:, lo] + (pos - lo) * (s[:, hi] - s[:, lo])


def parse(name: str) -> Aggregator:
    """Turn an aggregation name into a function of sorted (B, N, H) samples -> (B, H) points."""
    if name == "mean":
        return partial(np.mean, axis=1)
    if name == "median":
        return partial(quantile, q=0.5)
    m = _PATTERN.fullmatch(name)
    if not m:
        raise SweepError(
            f"unknown aggregation {name!r}: use mean, median, trimmed_mean_P, winsorized_mean_P (0<P<50) "
            "or quantile_Q (0<Q<1)"
        )
    kind, value = m.group(1), float(m.group(2))
    if kind == "quantile":
        if not 0 < value < 1:
            raise SweepError(f"invalid aggregation {name!r}: quantile Q must satisfy 0 < Q < 1")
        return partial(quantile, q=value)
    if not 0 < value < 50:
        raise SweepError(f"invalid aggregation {name!r}: percent cut per tail P must satisfy 0 < P < 50")
    return partial(trimmed_mean if kind == "trimmed_mean" else winsorized_mean, percent=value)


def aggregate(samples: np.ndarray, name: str, presorted: bool = False) -> np.ndarray:
    if samples.ndim != 3:
        raise ValueError(f"samples must be (origins, samples, horizon), got shape {samples.shape}")
    return parse(name)(samples if presorted else np.sort(samples, axis=1))
