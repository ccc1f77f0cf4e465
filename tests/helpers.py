"""Shared test helpers: real candles from the shared lake, and the no-leak check every backend must pass."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sweeper.backends.base import Backend
from sweeper.data import COLUMNS, Series, load
from sweeper.plan import contexts

SHARED_LAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv"


def shared_series(symbol: str, freq: str, last: int | None = None) -> Series:
    """A real series from ../shared/data/ohlcv, optionally only its last `last` bars."""
    s = load(SHARED_LAKE, [symbol], freq)[0]
    if last is None:
        return s
    return Series(s.symbol, s.freq, s.asset_class, s.ts[-last:].copy(), s.ohlcv[-last:].copy(), s.source)


def bars_frame(series: Series) -> pl.DataFrame:
    """A series as the frame of bars a trading script holds (the lake's columns)."""
    return pl.DataFrame({"ts": series.ts, **{c: series.ohlcv[:, i] for i, c in enumerate(COLUMNS[1:])}})


def assert_no_leak(
    model: Backend,
    series: Series,
    knobs: Mapping[str, Any],
    origins: np.ndarray,
    horizon: int,
    num_samples: int = 8,
    seed: int = 0,
) -> None:
    """Changing any bar at or after an origin must not change that origin's forecast.

    Forecasts each origin from the real series, then from a copy whose bars from the origin onwards are
    wildly different (prices x 10, volume x 100, timestamps kept); the draws must be identical.
    """
    ctx_len = int(knobs["context_length"])
    for o in origins:
        batch = np.array([o])
        before = model.forecast(contexts(series, batch, ctx_len), horizon, num_samples, knobs, seed)
        future = series.ohlcv.copy()
        future[o:, :4] *= 10.0
        future[o:, 4] = future[o:, 4] * 100.0 + 1.0
        poisoned = Series(series.symbol, series.freq, series.asset_class, series.ts, future, series.source)
        after = model.forecast(contexts(poisoned, batch, ctx_len), horizon, num_samples, knobs, seed)
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after), err_msg=f"origin row {o} leaks")
        # and the check itself can fail: poisoning the bar just before the origin must change the forecast
        past = series.ohlcv.copy()
        past[o - 1, :4] *= 10.0
        moved = Series(series.symbol, series.freq, series.asset_class, series.ts, past, series.source)
        changed = model.forecast(contexts(moved, batch, ctx_len), horizon, num_samples, knobs, seed)
        assert not np.array_equal(np.asarray(before), np.asarray(changed)), f"origin row {o}: context ignored"
