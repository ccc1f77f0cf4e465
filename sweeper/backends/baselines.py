"""Baselines that every comparison is measured against. They return samples like any model.

Each bootstraps one-bar log returns of its own context: naive centres them (a driftless random walk
from the last close), drift keeps their mean, seasonal naive repeats the last season and adds
bootstrapped seasonal differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sweeper.backends.base import Backend
from sweeper.plan import Contexts


def _bootstrap(increments: np.ndarray, num_samples: int, horizon: int, rng: np.random.Generator) -> np.ndarray:
    """Draw (B, N, H) increments, each origin from its own row of `increments` (B, K)."""
    b, k = increments.shape
    idx = rng.integers(0, k, size=(b, num_samples, horizon))
    return np.take_along_axis(increments[:, None, :], idx.reshape(b, 1, -1), axis=2).reshape(idx.shape)


class Naive(Backend):
    name = "naive"
    demean = True

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: int
    ) -> np.ndarray:
        log_close = np.log(ctx.close)
        returns = np.diff(log_close, axis=1)
        if self.demean:
            returns = returns - returns.mean(axis=1, keepdims=True)
        steps = _bootstrap(returns, num_samples, horizon, np.random.default_rng(seed))
        return np.exp(log_close[:, -1, None, None] + np.cumsum(steps, axis=2))


class Drift(Naive):
    name = "drift"
    demean = False


class SeasonalNaive(Backend):
    name = "seasonal_naive"

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: int
    ) -> np.ndarray:
        m = int(knobs["season"])
        log_close = np.log(ctx.close)
        if log_close.shape[1] <= 2 * m:
            raise ValueError(
                f"seasonal_naive needs a context longer than 2 seasons ({2 * m}), got {log_close.shape[1]}"
            )
        diffs = log_close[:, m:] - log_close[:, :-m]
        diffs = diffs - diffs.mean(axis=1, keepdims=True)
        noise = _bootstrap(diffs, num_samples, horizon, np.random.default_rng(seed))
        b = log_close.shape[0]
        path = np.empty((b, num_samples, horizon + m))
        path[:, :, :m] = log_close[:, None, -m:]
        for h in range(horizon):
            path[:, :, m + h] = path[:, :, h] + noise[:, :, h]
        return np.exp(path[:, :, m:])
