"""Greedy ensemble selection with replacement (Caruana et al. 2004), on validation origins.

Forecasts are the selected configurations (each backend's best, and the naive baseline). The ensemble
forecast is the weighted mixture of the members' samples; its point forecast is the weighted mean of the
members' point forecasts. Weights are counts of how often a member was picked, over the number of picks.

CRPS of a mixture decomposes exactly into per-member and per-pair terms:
    CRPS(sum_i w_i F_i, y) = sum_i w_i E|X_i - y| - 1/2 sum_ij w_i w_j E|X_i - X_j|
so the terms are computed once per member and pair, and every greedy step is arithmetic on them.
Step 1 picks the best single member, and the best step is kept, so the ensemble is never worse on
validation than its best member.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scoringrules as sr

from sweeper.objective import Forecast

ROUNDS = 25


@dataclass(frozen=True)
class Ensemble:
    weights: dict[str, float]  # member name -> weight; sum 1, zero weights dropped
    history: list[float]  # validation CRPS after each greedy round


def _crps_grid(
    samples: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, presorted: bool = False
) -> np.ndarray:
    """(B, H) CRPS of the (weighted) empirical distribution of `samples` (B, n, H)."""
    fct = np.moveaxis(samples, 1, -1)
    w = None if weights is None else np.broadcast_to(weights, fct.shape)
    return np.asarray(sr.crps_ensemble(y, fct, m_axis=-1, ens_w=w, sorted_ensemble=presorted and w is None))


def crps_terms(members: list[Forecast], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a[i] = E|X_i - y| and d[i, j] = E|X_i - X_j|, each (B, H)."""
    m = len(members)
    a = np.stack([np.abs(mb.samples - y[:, None, :]).mean(axis=1) for mb in members])
    d = np.empty((m, m, *y.shape))
    for i, mb in enumerate(members):
        d[i, i] = 2.0 * (a[i] - _crps_grid(mb.samples, y, presorted=True))
    for i in range(m):
        for j in range(i + 1, m):
            si, sj = members[i].samples, members[j].samples
            w = np.concatenate([np.full(si.shape[1], 0.5 / si.shape[1]), np.full(sj.shape[1], 0.5 / sj.shape[1])])
            pair = _crps_grid(np.concatenate([si, sj], axis=1), y, w)
            d[i, j] = d[j, i] = 4.0 * (0.5 * a[i] + 0.5 * a[j] - 0.125 * d[i, i] - 0.125 * d[j, j] - pair)
    return a, d


def mixture_crps(w: np.ndarray, a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Per-origin CRPS (mean over the horizon) of the mixture with weights `w` (M,)."""
    first = np.tensordot(w, a, axes=1)
    second = np.einsum("i,j,ij...->...", w, w, d)
    return (first - 0.5 * second).mean(axis=-1)


def greedy(members: list[Forecast], y: np.ndarray, rounds: int = ROUNDS) -> Ensemble:
    """Caruana's forward selection with replacement, minimising mean validation CRPS."""
    a, d = crps_terms(members, y)
    counts = np.zeros(len(members))
    history: list[float] = []
    best_counts, best_score = counts, np.inf
    for _ in range(rounds):
        trials = []
        for i in range(len(members)):
            c = counts.copy()
            c[i] += 1
            trials.append(float(mixture_crps(c / c.sum(), a, d).mean()))
        pick = int(np.argmin(trials))
        counts = counts.copy()
        counts[pick] += 1
        history.append(trials[pick])
        if trials[pick] < best_score - 1e-12:
            best_score, best_counts = trials[pick], counts
    w = best_counts / best_counts.sum()
    return Ensemble({mb.name: float(x) for mb, x in zip(members, w, strict=True) if x > 0}, history)


def mixture(members: list[Forecast], weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Pooled samples (B, N, H), their per-sample weights (N,), the point forecast and the latency."""
    used = [mb for mb in members if weights.get(mb.name, 0) > 0]
    samples = np.concatenate([mb.samples for mb in used], axis=1)
    w = np.concatenate([np.full(mb.samples.shape[1], weights[mb.name] / mb.samples.shape[1]) for mb in used])
    point = sum(weights[mb.name] * mb.point for mb in used)
    return samples, w, point, sum(mb.latency_s for mb in used)
