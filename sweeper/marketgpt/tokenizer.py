"""Candles to tokens and back: k-means bins of log returns, one codebook per OHLC component.

A bar t becomes four log returns over the previous close, log(o_t/c_{t-1}), log(h_t/c_{t-1}),
log(l_t/c_{t-1}), log(c_t/c_{t-1}): prices of any level map to the same vocabulary, and a path of close
tokens decodes back to prices by compounding from the last real close. Each component is discretised
on its own, because their distributions differ (opens sit near zero, highs are positive, lows negative).
Bins are fitted on training bars only and saved beside the weights, so encoding never depends on the
data being forecast.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sweeper.atomic import read_json, write_json
from sweeper.errors import SweepError

COMPONENTS = ("open", "high", "low", "close")
FORMAT = "marketgpt-tokenizer/1"
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR


def candle_returns(ohlc: np.ndarray) -> np.ndarray:
    """(..., T, >=4) prices -> (..., T-1, 4) log returns of each bar's OHLC over the previous close."""
    prices = np.asarray(ohlc, dtype=np.float64)[..., :4]
    return np.log(prices[..., 1:, :] / prices[..., :-1, 3:4])


def time_features(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day (0-23) and day of week (Monday 0) of UTC bar open times, for the learned time embeddings."""
    us = np.asarray(ts).astype("datetime64[us]").view(np.int64)
    days = np.floor_divide(us, _US_PER_DAY)
    hour = np.floor_divide(us - days * _US_PER_DAY, _US_PER_HOUR)
    return hour.astype(np.int64), ((days + 3) % 7).astype(np.int64)  # 1970-01-01 was a Thursday


@dataclass(frozen=True)
class CandleTokenizer:
    """Sorted bin centres per component; a return's token is its nearest centre."""

    centres: np.ndarray  # (4, V) ascending log returns
    scale: np.ndarray  # (4,) std of the fitted returns: the unit of the model's continuous head

    @property
    def vocab_size(self) -> int:
        return int(self.centres.shape[1])

    @property
    def edges(self) -> np.ndarray:
        """(4, V-1) midpoints between neighbouring centres: the bin boundaries."""
        return (self.centres[:, 1:] + self.centres[:, :-1]) / 2

    @classmethod
    def fit(
        cls,
        returns: np.ndarray,
        vocab_size: int = 1024,
        max_points: int = 200_000,
        seed: int = 0,
        on_component: Callable[[int], None] | None = None,
    ) -> CandleTokenizer:
        """k-means (scikit-learn) on each component's returns, started from evenly spaced quantiles.

        The quantile start makes the fit deterministic and quick; at most `max_points` bars are used
        (a seeded random subset) so fitting on many symbols stays in seconds. `on_component(j)` is called
        with the number of components fitted so far (0 to 4), for a progress bar.
        """
        from sklearn.cluster import KMeans
        from sklearn.exceptions import ConvergenceWarning

        returns = np.asarray(returns, dtype=np.float64).reshape(-1, 4)
        returns = returns[np.isfinite(returns).all(axis=1)]
        if vocab_size < 2:
            raise SweepError(f"vocabulary size must be at least 2, got {vocab_size}")
        if len(returns) < vocab_size:
            raise SweepError(
                f"cannot fit {vocab_size} bins on {len(returns)} bars of training data: use more data "
                "or a smaller vocabulary"
            )
        if len(returns) > max_points:
            pick = np.random.default_rng(seed).choice(len(returns), max_points, replace=False)
            returns = returns[np.sort(pick)]
        centres = np.empty((4, vocab_size))
        for j in range(4):
            if on_component:
                on_component(j)
            x = returns[:, j : j + 1]
            init = np.quantile(x[:, 0], (np.arange(vocab_size) + 0.5) / vocab_size)[:, None]
            with warnings.catch_warnings():
                # few distinct values (e.g. opens equal to the previous close) leave some bins duplicated
                warnings.simplefilter("ignore", ConvergenceWarning)
                km = KMeans(vocab_size, init=init, n_init=1, max_iter=100, random_state=seed).fit(x)
            centres[j] = np.sort(km.cluster_centers_[:, 0])
        if on_component:
            on_component(4)
        scale = np.maximum(returns.std(axis=0), 1e-8)
        return cls(centres, scale)

    def encode(self, returns: np.ndarray) -> np.ndarray:
        """(..., 4) log returns -> (..., 4) int64 tokens (the nearest centre; beyond the ends, the end bin)."""
        returns = np.asarray(returns, dtype=np.float64)
        edges = self.edges
        out = np.empty(returns.shape, dtype=np.int64)
        for j in range(4):
            out[..., j] = np.searchsorted(edges[j], returns[..., j])
        return out

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """(..., 4) tokens -> (..., 4) log returns (the bin centres)."""
        tokens = np.asarray(tokens)
        return np.stack([self.centres[j][tokens[..., j]] for j in range(4)], axis=-1)

    def to_prices(self, tokens: np.ndarray, last_close: np.ndarray) -> np.ndarray:
        """(..., T, 4) tokens after a bar closing at `last_close` (...) -> (..., T, 4) OHLC prices.

        Closes compound from `last_close`; each bar's open, high and low sit on its previous close.
        """
        rets = self.decode(tokens)
        log_close = np.log(np.asarray(last_close, dtype=np.float64))[..., None] + np.cumsum(rets[..., 3], axis=-1)
        prev = np.concatenate([np.log(np.asarray(last_close, dtype=np.float64))[..., None], log_close[..., :-1]], -1)
        return np.exp(prev[..., None] + rets)

    def save(self, path: Path) -> None:
        write_json(
            path,
            {
                "format": FORMAT,
                "components": list(COMPONENTS),
                "vocab_size": self.vocab_size,
                "centres": self.centres.tolist(),
                "scale": self.scale.tolist(),
            },
        )

    @classmethod
    def load(cls, path: Path) -> CandleTokenizer:
        doc = read_json(path)
        if doc.get("format") != FORMAT:
            raise SweepError(f"{path}: not a MarketGPT tokenizer (format {doc.get('format')!r}, expected {FORMAT})")
        centres = np.asarray(doc["centres"], dtype=np.float64)
        if centres.shape != (4, int(doc["vocab_size"])):
            raise SweepError(f"{path}: centres have shape {centres.shape}, expected (4, {doc['vocab_size']})")
        return cls(centres, np.asarray(doc["scale"], dtype=np.float64))
