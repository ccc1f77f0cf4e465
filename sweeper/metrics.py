"""Per-origin scores of a probabilistic forecast of the close price path.

Every function takes samples `(B, N, H)` or points `(B, H)`, targets `(B, H)` and returns one value per
origin `(B,)`, so any two candidates can later be compared origin by origin. CRPS comes from
`scoringrules` (the ensemble estimator; exact for equally weighted samples, weighted for mixtures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scoringrules as sr

from sweeper.aggregate import quantile
from sweeper.errors import SweepError

# lower is better for all but directional_accuracy
METRICS = ("crps", "msis", "mae", "mse", "mase", "pct_return_mae", "directional_accuracy", "latency_s")
HIGHER_IS_BETTER = frozenset({"directional_accuracy"})
MSIS_ALPHA = 0.05


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise SweepError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}")
    return name


def direction(name: str) -> str:
    return "maximize" if name in HIGHER_IS_BETTER else "minimize"


@dataclass(frozen=True)
class Truth:
    """What a forecast is scored against, per origin."""

    y: np.ndarray  # (B, H) actual closes
    last_close: np.ndarray  # (B,) last close in the context
    scale: np.ndarray  # (B,) mean |one-step change| over the context, the MASE/MSIS denominator


def truth(y: np.ndarray, context_close: np.ndarray) -> Truth:
    scale = np.abs(np.diff(context_close, axis=1)).mean(axis=1)
    return Truth(y, context_close[:, -1], np.where(scale > 0, scale, np.nan))


def crps(samples: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, presorted: bool = False) -> np.ndarray:
    """Mean CRPS over the horizon; `weights` (N,) turn the samples into a weighted mixture."""
    fct = np.moveaxis(samples, 1, -1)  # (B, H, N)
    ens_w = None if weights is None else np.broadcast_to(weights, fct.shape)
    return np.asarray(
        sr.crps_ensemble(y, fct, m_axis=-1, ens_w=ens_w, sorted_ensemble=presorted and weights is None)
    ).mean(axis=1)


def weighted_quantile(samples: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Inverse CDF of the weighted empirical distribution at q: (B, N, H), (N,) -> (B, H)."""
    order = np.argsort(samples, axis=1)
    cum = np.cumsum(weights[order], axis=1)
    idx = np.minimum((cum < q * cum[:, -1:, :]).sum(axis=1, keepdims=True), samples.shape[1] - 1)
    return np.take_along_axis(np.take_along_axis(samples, order, axis=1), idx, axis=1)[:, 0, :]


def msis(
    samples: np.ndarray,
    y: np.ndarray,
    scale: np.ndarray,
    alpha: float = MSIS_ALPHA,
    weights: np.ndarray | None = None,
    presorted: bool = False,
) -> np.ndarray:
    """Interval score of the central (1 - alpha) sample interval, divided by the naive scale."""
    if weights is None:
        s = samples if presorted else np.sort(samples, axis=1)
        lo, hi = quantile(s, alpha / 2), quantile(s, 1 - alpha / 2)
    else:
        lo, hi = (weighted_quantile(samples, weights, q) for q in (alpha / 2, 1 - alpha / 2))
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
        "directional_accuracy": (np.sign(actual_ret) == np.sign(pred_ret)).mean(axis=1),
    }


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
