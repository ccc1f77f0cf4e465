"""The evaluation plan: rolling forecast origins, split in time into validation and test.

An origin is the row index of the first target bar. The context of origin `o` with length `C` is rows
`[o - C, o)`, the targets are rows `[o, o + H)`: a context always ends before its first target.
Every candidate is scored on the same origins, so the first origin leaves room for the longest
context any candidate may ask for.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sweeper.data import Series, freq_seconds
from sweeper.errors import SweepError

MAX_VAL_ORIGINS = 500
MAX_TEST_ORIGINS = 200
# fewest origins a split may have: selection's block-bootstrap intervals need enough origins to resample
MIN_VAL_ORIGINS = 30
MIN_TEST_ORIGINS = 10


@dataclass(frozen=True)
class Protocol:
    """What a plan is made from; recorded in every config so it can be re-run."""

    horizon: int = 1
    max_context: int = 512
    val_origins: int | None = None  # None: as many as the series allows, up to MAX_VAL_ORIGINS
    test_origins: int | None = None
    stride: int = 1
    season: int | None = None  # of the MASE/MSIS scale; None: metrics.default_season of the series

    def __post_init__(self) -> None:
        """Too few origins asked for is a rule of the protocol, not a short series: say so, whatever the data."""
        for option, given, least in (
            ("--val-origins", self.val_origins, MIN_VAL_ORIGINS),
            ("--test-origins", self.test_origins, MIN_TEST_ORIGINS),
        ):
            if given is not None and given < least:
                raise SweepError(f"{option} {given}: at least {least} are needed (selection's intervals resample them)")


@dataclass(frozen=True)
class Plan:
    protocol: Protocol
    val: np.ndarray  # origin row indices, ascending
    test: np.ndarray

    def origins(self, split: str) -> np.ndarray:
        if split not in ("val", "test"):
            raise ValueError(split)
        return self.val if split == "val" else self.test

    def fingerprint(self) -> str:
        """Of the resolved origins, not of how they were asked for: default and explicit counts that give
        the same origins give the same fingerprint."""
        p = self.protocol
        h = hashlib.sha256(repr((p.horizon, p.max_context, p.stride)).encode())
        h.update(self.val.tobytes())
        h.update(self.test.tobytes())
        return h.hexdigest()[:16]

    def describe(self, series: Series) -> dict:
        def span(idx: np.ndarray) -> dict:
            return {"count": int(idx.size), "first_ts": str(series.ts[idx[0]]), "last_ts": str(series.ts[idx[-1]])}

        return {
            **asdict(self.protocol),
            "val_origins": span(self.val),
            "test_origins": span(self.test),
            "first_val_origin_row": int(self.val[0]),
            "first_test_origin_row": int(self.test[0]),
        }


def make_plan(series: Series, protocol: Protocol) -> Plan:
    """Place test origins at the end of the series and validation origins right before them.

    The last validation target ends before the first test target, so test bars never steer a choice.
    """
    h, c, stride = protocol.horizon, protocol.max_context, protocol.stride
    if h < 1 or c < 2 or stride < 1:
        raise SweepError(f"invalid plan for {series.symbol}: horizon, stride must be >= 1 and context >= 2")
    last = len(series) - h  # last origin whose targets fit
    first = c
    available = (last - first) // stride + 1 if last >= first else 0

    def fit(n: int | None, cap: int, share: float) -> int:
        return n if n is not None else min(cap, int(available * share))

    n_test = fit(protocol.test_origins, MAX_TEST_ORIGINS, 0.25)
    gap = -(-h // stride) - 1  # origins skipped so validation targets end before the first test target
    n_val = fit(protocol.val_origins, MAX_VAL_ORIGINS, 1.0)
    n_val = min(n_val, max(available - n_test - gap, 0)) if protocol.val_origins is None else n_val
    need = n_val + gap + n_test
    if n_test < MIN_TEST_ORIGINS or n_val < MIN_VAL_ORIGINS or need > available:
        rows_needed = c + (max(need, MIN_VAL_ORIGINS + gap + MIN_TEST_ORIGINS) - 1) * stride + h
        raise SweepError(
            f"series too short: {series.symbol} {series.freq} has {len(series)} bars; context {c} + horizon {h} "
            f"+ {max(n_val, MIN_VAL_ORIGINS)} validation and {max(n_test, MIN_TEST_ORIGINS)} test origins "
            f"(stride {stride}) need {rows_needed}"
        )
    all_origins = last - np.arange(available)[::-1] * stride
    test = all_origins[-n_test:]
    val = all_origins[-(n_test + gap + n_val) : len(all_origins) - n_test - gap]
    return Plan(protocol, val.astype(np.int64), test.astype(np.int64))


@dataclass(frozen=True)
class Contexts:
    """The past a backend may see for a batch of origins: never a bar at or after its origin."""

    values: np.ndarray  # (B, C, 5) open, high, low, close, volume
    ts: np.ndarray  # (B, C) datetime64[us]
    freq: str

    @property
    def close(self) -> np.ndarray:
        return self.values[:, :, 3]

    def future_ts(self, horizon: int) -> np.ndarray:
        """(B, H) timestamps of the bars after each context, for models' calendar features: the bar length
        stepped from the last bar, skipping weekdays the context never has a bar on (an equity's or FX
        pair's weekends). Built from the context alone, never from the real future bars."""
        step = np.timedelta64(freq_seconds(self.freq), "s")
        weekday = _weekday(self.ts)  # (B, C)
        trades = np.zeros((self.ts.shape[0], 7), dtype=bool)
        np.put_along_axis(trades, weekday, True, axis=1)
        reach = horizon * 7 + 7  # enough steps to find H open days however few days a week are open
        candidates = self.ts[:, -1:] + step * np.arange(1, reach + 1)
        open_ = np.take_along_axis(trades, _weekday(candidates), axis=1)
        first = np.argsort(~open_, axis=1, kind="stable")[:, :horizon]
        return np.take_along_axis(candidates, first, axis=1)


def _weekday(ts: np.ndarray) -> np.ndarray:
    """Monday = 0 (1970-01-01 was a Thursday)."""
    return (ts.astype("datetime64[D]").view(np.int64) + 3) % 7


def contexts(series: Series, origins: np.ndarray, length: int) -> Contexts:
    """Views of the `length` bars before each origin (no copies)."""
    if origins.size and int(origins.min()) < length:
        raise SweepError(f"context {length} does not fit before origin row {int(origins.min())} of {series.symbol}")
    win = sliding_window_view(series.ohlcv, length, axis=0)  # (T-length+1, 5, length)
    tsw = sliding_window_view(series.ts, length)
    start = origins - length
    return Contexts(win[start].transpose(0, 2, 1), tsw[start], series.freq)


def targets(series: Series, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Close prices of the H bars from each origin: (B, H)."""
    return sliding_window_view(series.close, horizon)[origins]
