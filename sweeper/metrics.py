"""Per-origin scores of a probabilistic forecast of the close price path.

Every function takes samples `(B, N, H)` or points `(B, H)`, targets `(B, H)` and returns one value per
origin `(B,)`, so any two candidates can later be compared origin by origin. CRPS comes from
`scoringrules` (the ensemble estimator; exact for equally weighted samples, weighted for mixtures).
What a metric means (direction, aggregation, display) is `sweeper.metric`'s.

MASE and MSIS divide by one number per series, the in-sample seasonal-naive MAE
mean |y_t - y_{t-m}| over the closes before the first validation origin (as gluonts' `Evaluator`, M4 and
fev define it, there over a forecast's own past), with the season m of `default_season` unless the run
sets one. So a forecast's scaled score does not depend on which other backends a run has, and all origins
of a series share one scale. A move is "no move" (a tie) when its relative size is at most `TIE`: a tie
on either side scores 0.5 in directional accuracy (no direction is neither right nor wrong) and keeps
the sign strategy flat (`sweeper.trading`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scoringrules as sr

from sweeper.aggregate import quantile
from sweeper.data import freq_seconds

MSIS_ALPHA = 0.05
# |change / last close| at or below this is no change: 0.01 bp, above the float32 resolution (6e-8) of
# cached draws, so a no-change forecast read off them stays a tie
TIE = 1e-6
POINT_METRICS = frozenset({"mae", "mse", "mase", "pct_return_mae", "directional_accuracy"})  # of the point forecast
LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)  # the quantiles a forecast reports (origins.parquet, api)


def default_season(freq: str, asset_class: str) -> int:
    """The seasonal-naive season m per bar size and asset class (README, "Evaluation protocol"): intraday
    bars of markets open around the clock repeat daily (1h: 24); equity sessions differ in length (1);
    daily bars repeat weekly, over 7 days for crypto and 5 trading days for the others; longer bars: 1."""
    seconds = freq_seconds(freq)
    if seconds < 86400:
        return 1 if asset_class == "equity" else 86400 // seconds
    if seconds == 86400:
        return 7 if asset_class == "crypto" else 5
    return 1


def seasonal_scale(history: np.ndarray, season: int) -> float:
    """In-sample seasonal-naive MAE of `history` (closes in time order); season 1 when the history is not
    longer than one season (as gluonts). NaN when it is zero (a flat history scales nothing)."""
    m = season if season < history.size else 1
    value = float(np.abs(history[m:] - history[:-m]).mean()) if history.size > m else float("nan")
    return value if value > 0 else float("nan")


@dataclass(frozen=True)
class Truth:
    """What a forecast is scored against, per origin."""

    y: np.ndarray  # (B, H) actual closes
    last_close: np.ndarray  # (B,) last close in the context
    scale: np.ndarray  # (B,) the MASE/MSIS denominator: the series' seasonal scale, the same at every origin


def truth(y: np.ndarray, last_close: np.ndarray, scale: float) -> Truth:
    return Truth(y, last_close, np.full(last_close.shape, scale))


def crps(samples: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, presorted: bool = False) -> np.ndarray:
    """Mean CRPS over the horizon; `weights` (N,) turn the samples into a weighted mixture."""
    fct = np.moveaxis(samples, 1, -1)  # (B, H, N)
    ens_w = None if weights is None else np.broadcast_to(weights, fct.shape)
    return np.asarray(
        sr.crps_ensemble(y, fct, m_axis=-1, ens_w=ens_w, sorted_ensemble=presorted and weights is None)
    ).mean(axis=1)


def weighted_quantile(samples: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Linearly interpolated quantile of weighted draws: (B, N, H), (N,) -> (B, H). Draw k of the sorted
    draws sits at probability (W_k - w_k) / (W - w_k) (W_k: cumulative weight), which for equal weights is
    k / (N - 1), numpy's default: so a mixture's interval and its members' intervals are read the same way."""
    order = np.argsort(samples, axis=1)
    x = np.take_along_axis(samples, order, axis=1)
    w = weights[order] / weights.sum()
    pos = (np.cumsum(w, axis=1) - w) / np.maximum(1.0 - w, 1e-300)
    pos = np.maximum.accumulate(np.minimum(pos, 1.0), axis=1)
    n = samples.shape[1]
    lo = np.clip((pos <= q).sum(axis=1, keepdims=True) - 1, 0, max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    p_lo, p_hi = np.take_along_axis(pos, lo, axis=1), np.take_along_axis(pos, hi, axis=1)
    x_lo, x_hi = np.take_along_axis(x, lo, axis=1), np.take_along_axis(x, hi, axis=1)
    frac = np.clip(np.where(p_hi > p_lo, (q - p_lo) / np.where(p_hi > p_lo, p_hi - p_lo, 1.0), 0.0), 0.0, 1.0)
    return (x_lo + frac * (x_hi - x_lo))[:, 0, :]


def quantiles(
    samples: np.ndarray, weights: np.ndarray | None = None, levels: tuple[float, ...] = LEVELS, presorted: bool = False
) -> np.ndarray:
    """(B, len(levels), H) quantiles of the draws (MSIS's interval among them): numpy's linear rule for
    equally weighted draws, the weighted inverse CDF for a mixture (`weights` (N,))."""
    if weights is not None:
        return np.stack([weighted_quantile(samples, weights, q) for q in levels], axis=1)
    s = samples if presorted else np.sort(samples, axis=1)
    return np.stack([quantile(s, q) for q in levels], axis=1)


def msis(
    samples: np.ndarray,
    y: np.ndarray,
    scale: np.ndarray,
    alpha: float = MSIS_ALPHA,
    weights: np.ndarray | None = None,
    presorted: bool = False,
) -> np.ndarray:
    """Interval score of the central (1 - alpha) sample interval, divided by the seasonal scale."""
    bounds = quantiles(samples, weights, (alpha / 2, 1 - alpha / 2), presorted)
    lo, hi = bounds[:, 0], bounds[:, 1]
    score = (hi - lo) + (2 / alpha) * ((lo - y) * (y < lo) + (y - hi) * (y > hi))
    return score.mean(axis=1) / scale


def point_scores(point: np.ndarray, t: Truth) -> dict[str, np.ndarray]:
    err = point - t.y
    last = t.last_close[:, None]
    actual_ret, pred_ret = t.y / last - 1.0, point / last - 1.0
    mae = np.abs(err).mean(axis=1)
    return {
        "mae": mae,
        "mse": (err**2).mean(axis=1),
        "mase": mae / t.scale,
        "pct_return_mae": np.abs(actual_ret - pred_ret).mean(axis=1),
        "directional_accuracy": direction_hits(pred_ret, actual_ret).mean(axis=1),
    }


def move(ret: np.ndarray) -> np.ndarray:
    """The direction of a relative change: +1, -1, or 0 for a tie (|change| <= TIE)."""
    return np.where(np.abs(ret) <= TIE, 0.0, np.sign(ret))


def direction_hits(pred_ret: np.ndarray, actual_ret: np.ndarray) -> np.ndarray:
    """1 where predicted and actual moves agree, 0 where they oppose, 0.5 where either is a tie."""
    p, a = move(pred_ret), move(actual_ret)
    return np.where((p == 0) | (a == 0), 0.5, (p == a).astype(np.float64))


def score(
    samples: np.ndarray,
    point: np.ndarray,
    t: Truth,
    latency_s: np.ndarray | float,
    weights: np.ndarray | None = None,
    presorted: bool = False,
) -> dict[str, np.ndarray]:
    """All metrics, one array of shape (B,) each; `weights` (N,) score a weighted mixture of samples,
    `presorted` says the samples are sorted along axis 1 (saves the sorts)."""
    return {
        "crps": crps(samples, t.y, weights, presorted),
        "msis": msis(samples, t.y, t.scale, weights=weights, presorted=presorted),
        **point_scores(point, t),
        "latency_s": np.broadcast_to(np.asarray(latency_s, dtype=np.float64), t.last_close.shape),
    }
