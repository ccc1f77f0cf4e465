"""Point forecasts from samples: mean, median, trimmed_mean_P, winsorized_mean_P, quantile_Q.

P is the percent cut from EACH tail (0 < P < 50), so trimmed_mean_5 drops the lowest and highest 5%.
Q is a probability (0 < Q < 1). Samples lie on axis 1: (origins, samples, horizon).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import numpy as np

from sweeper.errors import SweepError

Aggregator = Callable[[np.ndarray], np.ndarray]
_PATTERN = re.compile(r"^(trimmed_mean|winsorized_mean|quantile)_(\d+(?:\.\d+)?)$")


def _cut(n: int, percent: float) -> int:
    """How many samples each tail loses (floor, as scipy.stats.trim_mean); P < 50 always leaves one."""
    return int(np.floor(n * percent / 100.0 + 1e-9))


def trimmed_mean(x: np.ndarray, percent: float) -> np.ndarray:
    k = _cut(x.shape[1], percent)
    s = np.sort(x, axis=1)
    return s[:, k : x.shape[1] - k].mean(axis=1)


def winsorized_mean(x: np.ndarray, percent: float) -> np.ndarray:
    k = _cut(x.shape[1], percent)
    s = np.sort(x, axis=1)
    lo, hi = s[:, k : k + 1], s[:, x.shape[1] - 1 - k : x.shape[1] - k]
    return np.clip(s, lo, hi).mean(axis=1)


def quantile(x: np.ndarray, q: float) -> np.ndarray:
    return np.quantile(x, q, axis=1)


def parse(name: str) -> Aggregator:
    """Turn an aggregation name into a function of (B, N, H) samples -> (B, H) points."""
    if name == "mean":
        return partial(np.mean, axis=1)
    if name == "median":
        return partial(np.median, axis=1)
    m = _PATTERN.match(name)
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


def aggregate(samples: np.ndarray, name: str) -> np.ndarray:
    if samples.ndim != 3:
        raise ValueError(f"samples must be (origins, samples, horizon), got shape {samples.shape}")
    return parse(name)(samples)
