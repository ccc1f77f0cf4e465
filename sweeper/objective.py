"""Scoring a candidate configuration on a symbol's plan, and the objective a search minimises.

A candidate is a backend plus its knobs. Its samples come from the forecaster (cached, with as many draws
as trials have asked for); the trial's own sample count and aggregation are applied here.

Multi-fidelity: the objective scores the validation origins chunk by chunk (`forecast.chunk_bounds`) and,
after each chunk but the last, hands the running mean to a `Report` (the search engine's pruner, see
`search.optuna_report`); when it says stop, the trial ends PRUNED having paid only for the chunks it saw.
The pruner is asked at every chunk whether the chunk was cached or not: what it decides depends only on
the study's history, never on what an earlier run left in the cache, so a resumed run prunes as the
uninterrupted one did (`search.Halving`). A trial that sees every chunk is valued on all validation
origins, the same origins for every trial.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from sweeper import metrics
from sweeper.aggregate import aggregate
from sweeper.cache import Cached
from sweeper.data import Series
from sweeper.finetune.settings import FinetuneSettings
from sweeper.forecast import Forecaster, RungScores, chunk_bounds
from sweeper.metric import get
from sweeper.plan import Plan, targets
from sweeper.space import AGGREGATION, Space


@dataclass(frozen=True)
class Candidate:
    """A backend and its knobs. `draws`: how many draws a live forecast makes (`sweeper.api`, default: the
    space's largest num_samples); draws come in seeded blocks, so their first n never depend on it."""

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

    def truth(self, split: str, chunks: range | None = None) -> metrics.Truth:
        """Targets, last context closes and the series' scale for the origins of `split` (of its `chunks`)."""
        if split not in self._truth:
            idx = self.plan.origins(split)
            y = targets(self.series, idx, self.plan.protocol.horizon)
            self._truth[split] = metrics.truth(y, self.series.close[idx - 1], self.scale())
        t = self._truth[split]
        if chunks is None:
            return t
        cut = np.concatenate([np.arange(*self.chunks(split)[i]) for i in chunks])
        return metrics.Truth(t.y[cut], t.last_close[cut], t.scale[cut])

    def chunks(self, split: str) -> list[tuple[int, int]]:
        """(start, end) of each chunk of the split's origins: the rungs of the multi-fidelity search."""
        return chunk_bounds(self.plan.origins(split).size)

    def forecast(
        self,
        cand: Candidate,
        split: str,
        name: str | None = None,
        chunks: range | None = None,
        on_rung: RungScores | None = None,
    ) -> Forecast:
        """The candidate's n draws (the first n cached, extended when fewer are held), point and latency.
        `on_rung`: a fine-tuning trial's hook at each rung of its training steps (`rung_reporter`)."""
        n = int(cand.params["num_samples"])
        cached = self.forecaster.samples(self.series, self.plan, split, cand.backend, cand.params, n, chunks, on_rung)
        return from_draws(name or cand.backend, cached.samples, cand.params, cached.seconds_per_origin)

    def scores(self, cand: Candidate, split: str, chunks: range | None = None) -> dict[str, np.ndarray]:
        """Per-origin metrics of a candidate on `split` ("val" or "test"), of `chunks` of it when given."""
        f = self.forecast(cand, split, chunks=chunks)
        return metrics.score(f.samples, f.point, self.truth(split, chunks), f.latency_s, presorted=True)

    def rungs(
        self,
        cand: Candidate,
        aggregations: tuple[str, ...],
        metric: str,
        split: str = "val",
        on_rung: RungScores | None = None,
    ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """After each chunk in turn: the aggregation that is best so far and the per-origin metrics of the
        origins seen so far with it. One forecast serves every aggregation (the draws sorted once, each
        aggregation a pass over them); the best is the one best on `metric` when it scores the point
        forecast, else on MAE. A caller that stops iterating never forecasts the chunks after it. `on_rung` goes
        with the first chunk's forecast (a fine-tuning trial trains its weights there)."""
        judge = get(metric if metric in metrics.POINT_METRICS else "mae")
        seen: list[tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]] = []
        for i in range(len(self.chunks(split))):
            chunk = range(i, i + 1)
            first = Candidate(cand.backend, {**cand.params, AGGREGATION: aggregations[0]})
            f = self.forecast(first, split, chunks=chunk, on_rung=on_rung if i == 0 else None)
            t = self.truth(split, chunk)
            shared = metrics.score(f.samples, f.point, t, f.latency_s, presorted=True)
            points = {a: metrics.point_scores(aggregate(f.samples, a, presorted=True), t) for a in aggregations}
            seen.append((shared, points))

            def loss(a: str) -> float:
                return judge.sign * judge.aggregate(np.concatenate([p[a][judge.name] for _, p in seen]))

            best = min(aggregations, key=loss)
            merged = [{**s, **p[best]} for s, p in seen]
            yield best, {k: np.concatenate([m[k] for m in merged]) for k in merged[0]}


VAL_PREFIX = "val_"  # one trial user attribute per validation mean (val_crps, val_mae, ...), as dashboards show them


def storage_trial(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of a study's trial, which every storage write takes, by the storage's public
    lookups (Optuna keeps `Trial._trial_id`, `FrozenTrial._trial_id` and `Study._study_id` private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def record_aggregation(trial: optuna.Trial, space: Space, choice: str) -> None:
    """Store the aggregation a trial picked as its parameter, in the study's storage, so trials and configs
    carry every knob (the sampler never proposes it). Not `trial.suggest_categorical`: that asks the
    sampler (or the queued knobs) for a value instead of recording the trial's pick."""
    p = space.params[AGGREGATION]
    dist = p.distribution()
    trial_id = storage_trial(trial.storage, trial.study, trial.number)
    trial.storage.set_trial_param(trial_id, p.optuna_name, dist.to_internal_repr(p.optuna_value(choice)), dist)


def record_means(trial: optuna.Trial, means: dict[str, float]) -> None:
    for k, v in means.items():
        trial.set_user_attr(f"{VAL_PREFIX}{k}", v)


def recorded_means(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The validation means a trial recorded (empty for one that did not complete)."""
    return {k.removeprefix(VAL_PREFIX): v for k, v in trial.user_attrs.items() if k.startswith(VAL_PREFIX)}


def mean_scores(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Each metric's per-origin values aggregated as the metric says (`sweeper.metric`)."""
    return {k: get(k).aggregate(v) for k, v in scores.items()}


# The multi-fidelity hook: (step, value so far) -> whether to stop there. `search.optuna_report` is the
# Optuna engine's; anything that improves a trial step by step (origins scored, training steps) can call one.
Report = Callable[[int, float], bool]


def objective(
    trial: optuna.Trial,
    task: SymbolTask,
    backend: str,
    objectives: tuple[str, ...],
    report: Report | None = None,
) -> float | tuple:
    """The plain function Optuna calls: suggest the model knobs and sample count, score them on validation
    origins chunk by chunk with every aggregation of the space (asking `report` after each chunk but the
    last whether to stop), keep the best aggregation as the trial's, return the mean(s) over all origins."""
    space = task.spaces[backend]
    params = space.suggest(trial)
    cand, chunks, metric = Candidate(backend, params), len(task.chunks("val")), get(objectives[0])
    on_rung = rung_reporter(task, cand, objectives, report)
    if on_rung is not None:
        report = None  # a fine-tuning trial is judged on its training steps (every origin at each rung)
    rungs = task.rungs(cand, space.aggregations, objectives[0], on_rung=on_rung)
    for step, (aggregation, scores) in enumerate(rungs, 1):
        if report is None or step == chunks:
            continue
        # asked at every chunk, cached or not: the pruner's history, and so the run, never depends on the cache
        if report(step, metric.aggregate(scores[objectives[0]])):
            record_aggregation(trial, space, aggregation)
            raise optuna.TrialPruned()  # trials.parquet's prune_step: the chunks it saw
    record_aggregation(trial, space, aggregation)
    means = mean_scores(scores)
    record_means(trial, means)
    values = tuple(means[m] for m in objectives)
    return values[0] if len(values) == 1 else values


def rung_reporter(
    task: SymbolTask, cand: Candidate, objectives: tuple[str, ...], report: Report | None
) -> RungScores | None:
    """Multi-fidelity for fine-tuning trials: hand the validation mean at each rung of the training steps to
    the engine's `report` (the same hook as the origin chunks) and stop a trial that is behind (a bad
    learning rate) before it trains on. Scored with the space's first aggregation (CRPS needs none)."""
    steps = FinetuneSettings.from_knobs(cand.params).steps
    if not steps or report is None or len(objectives) > 1:  # Optuna prunes single-objective studies only
        return None
    scored = Candidate(cand.backend, {AGGREGATION: task.spaces[cand.backend].aggregations[0], **cand.params})

    def on_rung(step: int, cached: Cached) -> None:
        f = from_draws(cand.backend, cached.samples, scored.params, cached.seconds_per_origin)
        scores = metrics.score(f.samples, f.point, task.truth("val"), f.latency_s, presorted=True)
        value = get(objectives[0]).aggregate(scores[objectives[0]])
        if report(step, value) and step < steps:
            raise optuna.TrialPruned(f"{objectives[0]} {value:.6g} after {step} of {steps} fine-tuning steps")

    return on_rung
