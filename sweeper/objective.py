"""Scoring a candidate configuration on a symbol's plan, and the objective a search minimises.

A candidate is a backend plus its knobs. Its samples come from the forecaster (cached at the largest
sample count of the backend's space); the trial's own sample count and aggregation are applied here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from sweeper import metrics
from sweeper.aggregate import aggregate
from sweeper.cache import Cached
from sweeper.data import Series
from sweeper.finetune.settings import FinetuneSettings
from sweeper.forecast import Forecaster, RungScores
from sweeper.metric import get
from sweeper.plan import Plan, targets
from sweeper.space import Space


@dataclass(frozen=True)
class Candidate:
    """A backend and its knobs. `draws`: how many samples were cached for it (default: the space's
    largest num_samples); recorded in configs so a re-evaluation reproduces the same draws."""

    backend: str
    params: dict[str, Any]
    draws: int | None = None


@dataclass(frozen=True)
class Forecast:
    """A candidate's forecast of a split: draws (B, n, H), point (B, H), model seconds per origin.

    The draws are sorted per origin and step: marginal distributions, which is all the metrics, the
    aggregations and the ensemble use (the path order of a draw across steps is not kept)."""

    name: str
    samples: np.ndarray
    point: np.ndarray
    latency_s: float


def from_draws(name: str, draws: np.ndarray, params: Mapping[str, Any], latency_s: float = 0.0) -> Forecast:
    """A candidate's forecast from its draws (B, draws, H): the first `num_samples` of them (sorted) and
    their aggregation. The one rule for the sweep, eval and live forecasts (`sweeper.api`)."""
    samples = np.sort(draws[:, : int(params["num_samples"])].astype(np.float64), axis=1)
    return Forecast(name, samples, aggregate(samples, str(params["aggregation"]), presorted=True), latency_s)


@dataclass
class SymbolTask:
    """Everything needed to score candidates for one symbol: series, plan, spaces, forecaster."""

    series: Series
    plan: Plan
    spaces: dict[str, Space]
    forecaster: Forecaster
    _truth: dict[str, metrics.Truth] = field(default_factory=dict)

    @property
    def season(self) -> int:
        return self.plan.protocol.season or metrics.default_season(self.series.freq, self.series.asset_class)

    def scale(self) -> float:
        """The MASE/MSIS denominator: seasonal-naive MAE of the closes before the first validation origin."""
        return metrics.seasonal_scale(self.series.close[: int(self.plan.val[0])], self.season)

    def truth(self, split: str) -> metrics.Truth:
        """Targets, last context closes and the series' scale for the origins of `split`."""
        if split not in self._truth:
            idx = self.plan.origins(split)
            y = targets(self.series, idx, self.plan.protocol.horizon)
            self._truth[split] = metrics.truth(y, self.series.close[idx - 1], self.scale())
        return self._truth[split]

    def forecast(
        self, cand: Candidate, split: str, name: str | None = None, on_rung: RungScores | None = None
    ) -> Forecast:
        """The candidate's n draws (first n of the cached ones), its point forecast and latency."""
        n_max = cand.draws or self.spaces[cand.backend].max_samples
        cached = self.forecaster.samples(self.series, self.plan, split, cand.backend, cand.params, n_max, on_rung)
        return self.forecast_from(cand, cached, n_max, name)

    def forecast_from(self, cand: Candidate, cached: Cached, n_max: int, name: str | None = None) -> Forecast:
        """A forecast from draws already made (the cache holds `n_max` per origin; the candidate uses its n)."""
        latency = cached.seconds_per_origin * int(cand.params["num_samples"]) / n_max
        return from_draws(name or cand.backend, cached.samples, cand.params, latency)

    def scores(self, cand: Candidate, split: str, on_rung: RungScores | None = None) -> dict[str, np.ndarray]:
        """Per-origin metrics of a candidate on `split` ("val" or "test")."""
        return self.score(self.forecast(cand, split, on_rung=on_rung), split)

    def score(self, f: Forecast, split: str) -> dict[str, np.ndarray]:
        return metrics.score(f.samples, f.point, self.truth(split), f.latency_s, presorted=True)


VAL_PREFIX = "val_"  # one trial user attribute per validation mean (val_crps, val_mae, ...), as dashboards show them


def record_means(trial: optuna.Trial, means: dict[str, float]) -> None:
    for k, v in means.items():
        trial.set_user_attr(f"{VAL_PREFIX}{k}", v)


def recorded_means(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The validation means a trial recorded (empty for one that did not complete)."""
    return {k.removeprefix(VAL_PREFIX): v for k, v in trial.user_attrs.items() if k.startswith(VAL_PREFIX)}


def mean_scores(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Each metric's per-origin values aggregated as the metric says (`sweeper.metric`)."""
    return {k: get(k).aggregate(v) for k, v in scores.items()}


def objective(trial: optuna.Trial, task: SymbolTask, backend: str, objectives: tuple[str, ...]) -> float | tuple:
    """The plain function Optuna calls: suggest knobs, score on validation origins, return the mean(s)."""
    params = task.spaces[backend].suggest(trial)
    cand = Candidate(backend, params)
    means = mean_scores(task.scores(cand, "val", rung_reporter(trial, task, cand, objectives)))
    record_means(trial, means)
    values = tuple(means[m] for m in objectives)
    return values[0] if len(values) == 1 else values


def rung_reporter(
    trial: optuna.Trial, task: SymbolTask, cand: Candidate, objectives: tuple[str, ...]
) -> RungScores | None:
    """Multi-fidelity for fine-tuning trials: report the validation mean at each rung of the training steps
    and let the study's pruner stop a trial that is behind (a bad learning rate) before it trains on."""
    steps = FinetuneSettings.from_knobs(cand.params).steps
    if not steps or len(objectives) > 1:  # Optuna prunes single-objective studies only
        return None
    n_max = cand.draws or task.spaces[cand.backend].max_samples

    def report(step: int, cached: Cached) -> None:
        value = float(np.nanmean(task.score(task.forecast_from(cand, cached, n_max), "val")[objectives[0]]))
        trial.report(value, step)
        if step < steps and trial.should_prune():
            raise optuna.TrialPruned(f"{objectives[0]} {value:.6g} after {step} of {steps} fine-tuning steps")

    return report
