"""Baselines that every comparison is measured against. They return samples like any model.

Each bootstraps one-bar log returns of its own context. Naive is the no-change forecast: its draws come
in mirrored pairs last * exp(S) and 2 * last - last * exp(S) (S a path of bootstrapped, demeaned log
returns), so at every step they are symmetric about the last close: their mean, median and every
symmetric trim are the last close (to float rounding), and a point forecast from them predicts no move.
Where a path more than doubles (S >= ln 2) the mirror would be a price at or below zero, so that pair is
mirrored in log space instead (last * exp(-S)), which keeps the median. Pairs are adjacent, so any even
number of first draws (what a trial takes from the cache) is balanced; the space's sample counts are even.
Drift keeps the returns' mean; seasonal naive repeats the last season and adds bootstrapped seasonal
differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sweeper.backends.base import Backend, Seeds, origin_rngs
from sweeper.knob import Knob
from sweeper.plan import Contexts


def _bootstrap(increments: np.ndarray, num_samples: int, horizon: int, seed: Seeds) -> np.ndarray:
    """Draw (B, N, H) increments, each origin from its own row of `increments` (B, K) with its own seed
    (row-major: the first n draws never depend on N)."""
    b, k = increments.shape
    idx = np.stack([rng.integers(0, k, size=(num_samples, horizon)) for rng in origin_rngs(seed, b)])
    return np.take_along_axis(increments[:, None, :], idx.reshape(b, 1, -1), axis=2).reshape(idx.shape)


def _paths(ctx: Contexts, horizon: int, num_samples: int, seed: Seeds, demean: bool) -> np.ndarray:
    """(B, N, H) cumulative log returns S of bootstrapped one-bar log returns of each context."""
    returns = np.diff(np.log(ctx.close), axis=1)
    if demean:
        returns = returns - returns.mean(axis=1, keepdims=True)
    return np.cumsum(_bootstrap(returns, num_samples, horizon, seed), axis=2)


class Naive(Backend):
    name = "naive"

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds, first: int = 0
    ) -> np.ndarray:
        if first:  # each origin's draws are one row-major stream: the later ones are the tail of a longer call
            return self.forecast(ctx, horizon, first + num_samples, knobs, seed)[:, first:]
        last = ctx.close[:, -1, None, None]
        s = _paths(ctx, horizon, -(-num_samples // 2), seed, demean=True)
        up = last * np.exp(s)
        mirror = np.where(s < np.log(2.0), 2.0 * last - up, last * np.exp(-s))
        pairs = np.stack([up, mirror], axis=2)  # (B, N/2, 2, H): draw 2k and 2k + 1 mirror each other
        return pairs.reshape(up.shape[0], -1, horizon)[:, :num_samples]


class Drift(Backend):
    name = "drift"

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds, first: int = 0
    ) -> np.ndarray:
        if first:  # each origin's draws are one row-major stream: the later ones are the tail of a longer call
            return self.forecast(ctx, horizon, first + num_samples, knobs, seed)[:, first:]
        return ctx.close[:, -1, None, None] * np.exp(_paths(ctx, horizon, num_samples, seed, demean=False))


class SeasonalNaive(Backend):
    name = "seasonal_naive"
    knobs = (Knob("season", int, 7, low=1, doc="bars per season: 24 hourly bars a day, 5 or 7 daily bars a week"),)

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds, first: int = 0
    ) -> np.ndarray:
        if first:  # each origin's draws are one row-major stream: the later ones are the tail of a longer call
            return self.forecast(ctx, horizon, first + num_samples, knobs, seed)[:, first:]
        m = self.knob_values(knobs)["season"]
        log_close = np.log(ctx.close)
        if log_close.shape[1] <= 2 * m:
            raise ValueError(
                f"seasonal_naive needs a context longer than 2 seasons ({2 * m}), got {log_close.shape[1]}"
            )
        diffs = log_close[:, m:] - log_close[:, :-m]
        diffs = diffs - diffs.mean(axis=1, keepdims=True)
        noise = _bootstrap(diffs, num_samples, horizon, seed)
        b = log_close.shape[0]
        path = np.empty((b, num_samples, horizon + m))
        path[:, :, :m] = log_close[:, None, -m:]
        for h in range(horizon):
            path[:, :, m + h] = path[:, :, h] + noise[:, :, h]
        return np.exp(path[:, :, m:])
