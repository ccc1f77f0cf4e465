"""Selection for one symbol: the best knobs of each backend on validation, one winner, an ensemble.

The winner and the ensemble weights are fixed from validation scores alone; only then are test origins
forecast and scored, once, for the report. Every comparison (winner vs naive, winner vs runner-up,
ensemble vs winner) carries a Diebold-Mariano p-value and a block-bootstrap interval (`compare.py`).

Which candidate wins is a rule (`--select`, recorded in the config):
- `beats-naive` (default): the naive baseline, unless a candidate beats it beyond noise on validation
  (DM test at 5%, difference on the metric's better side); of those that do, the best validation mean.
  A candidate whose edge over naive is within noise is not worth its cost and usually loses it on test.
- `best`: the best validation mean, whatever its edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sweeper import metrics
from sweeper.backends import BASELINE
from sweeper.compare import Comparison, paired_bootstrap
from sweeper.ensemble import greedy, mixture
from sweeper.errors import SweepError
from sweeper.metric import Metric, get
from sweeper.objective import Candidate, Forecast, SymbolTask, mean_scores
from sweeper.search import StudyOutcome
from sweeper.trading import sign_strategy

ENSEMBLE = "ensemble"
REFERENCE = "baseline"  # the naive floor when naive itself was not searched
BEATS_NAIVE, BEST = "beats-naive", "best"
RULES = {
    BEATS_NAIVE: "naive unless a candidate beats it beyond noise on validation",
    BEST: "the best validation mean",
}


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise SweepError(f"unknown --select {rule!r}: choose one of {', '.join(RULES)}")
    return rule


@dataclass
class BackendResult:
    backend: str
    params: dict[str, Any] | None
    trials: int  # completed: scored on every validation origin
    val: dict[str, float] | None = None
    test: dict[str, float] | None = None
    error: str | None = None
    trading: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> sign-strategy read-out
    pruned: int = 0  # trials stopped early by the multi-fidelity search (never selected)


@dataclass
class EnsembleResult:
    weights: dict[str, float]
    val: dict[str, float]
    test: dict[str, float]
    history: list[float]


@dataclass
class SymbolResult:
    symbol: str
    chosen: str | None
    backends: dict[str, BackendResult]
    baseline: BackendResult
    baseline_source: str  # "tuned" when naive was searched, "defaults" otherwise
    ensemble: EnsembleResult | None = None
    comparisons: dict[str, dict[str, Comparison]] = field(default_factory=dict)
    per_origin: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    rule: str = BEATS_NAIVE
    why: str = ""  # how the rule picked `chosen`
    bands: dict[tuple[str, str], Band] = field(default_factory=dict)  # what was scored, for origins.parquet

    def chosen_result(self) -> BackendResult | None:
        """The chosen candidate's result: a searched backend's, or the naive defaults' (REFERENCE)."""
        if self.chosen == REFERENCE:
            return self.baseline
        return self.backends.get(self.chosen) if self.chosen else None


@dataclass(frozen=True)
class Band:
    """A forecast as scored: point (B, H) and quantiles (B, len(metrics.LEVELS), H)."""

    point: np.ndarray
    quantiles: np.ndarray


def _ensemble_scores(
    task: SymbolTask, members: list[Forecast], weights: dict[str, float], split: str, bands: dict
) -> dict:
    samples, w, point, latency = mixture(members, weights)
    bands[(ENSEMBLE, split)] = Band(point, metrics.quantiles(samples, w))
    return metrics.score(samples, point, task.truth(split), latency, weights=w)


def _score(task: SymbolTask, f: Forecast, split: str, bands: dict) -> dict[str, np.ndarray]:
    bands[(f.name, split)] = Band(f.point, metrics.quantiles(f.samples, presorted=True))
    return metrics.score(f.samples, f.point, task.truth(split), f.latency_s, presorted=True)


def _trade(task: SymbolTask, f: Forecast, split: str, into: BackendResult) -> None:
    """The sign-strategy read-out of the point forecast (10 bp costs, one-bar lag); needs stride-1 origins."""
    if task.plan.protocol.stride == 1:
        t = task.truth(split)
        into.trading[split] = sign_strategy(f.point, t.last_close, t.y).to_dict()


def choose(
    rule: str, ranked: list[str], val: dict[str, np.ndarray], base: str, m: Metric, horizon: int, seed: int
) -> tuple[str | None, str]:
    """The winner under `rule` from candidates ranked on validation, and why; `val` holds per-origin
    validation values of the metric, `base` names the naive baseline among them."""
    if not ranked:
        return None, "no candidate"
    if rule == BEST:
        return ranked[0], f"best validation {m.name}"
    for name in ranked:
        if name == base:
            continue
        cmp = paired_bootstrap(val[name], val[base], m.name, horizon, seed)
        if m.beats(cmp):
            return name, f"beats naive beyond noise on validation (p = {cmp.p_value:.3g})"
    return base, "naive: no candidate beats it beyond noise on validation"


def select(
    task: SymbolTask, outcomes: dict[str, StudyOutcome], metric: str, seed: int = 0, rule: str = BEATS_NAIVE
) -> SymbolResult:
    """`outcomes` holds each searched backend's study outcome (its best params on validation, or why none)."""
    results = {b: BackendResult(b, o.params, o.complete, error=o.error, pruned=o.pruned) for b, o in outcomes.items()}
    cands = {b: Candidate(b, r.params) for b, r in results.items() if r.params is not None}
    tuned = BASELINE in cands
    base_key = BASELINE if tuned else REFERENCE
    if not tuned:
        cands[REFERENCE] = Candidate(BASELINE, task.spaces[BASELINE].defaults() or {})
    baseline = results[BASELINE] if tuned else BackendResult(BASELINE, cands[REFERENCE].params, 0)
    bucket = {**results, REFERENCE: baseline}

    per_origin: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    bands: dict[tuple[str, str], Band] = {}
    val = {name: task.forecast(c, "val", name) for name, c in cands.items()}
    for name, f in val.items():
        per_origin[(name, "val")] = _score(task, f, "val", bands)
        bucket[name].val = mean_scores(per_origin[(name, "val")])
        _trade(task, f, "val", bucket[name])
    m, h = get(metric), task.plan.protocol.horizon
    ranked = m.best({b: bucket[b].val[metric] for b in results if b in cands})  # searched backends
    val_metric = {b: per_origin[(b, "val")][metric] for b in cands}
    chosen, why = choose(rule, ranked, val_metric, base_key, m, h, seed)
    ens = greedy(list(val.values()), task.truth("val").y) if len(val) > 1 else None
    if ens is not None:
        per_origin[(ENSEMBLE, "val")] = _ensemble_scores(task, list(val.values()), ens.weights, "val", bands)
    del val
    # -- selection and weights are final here; test origins are touched from this line on --
    test = {name: task.forecast(c, "test", name) for name, c in cands.items()}
    for name, f in test.items():
        per_origin[(name, "test")] = _score(task, f, "test", bands)
        bucket[name].test = mean_scores(per_origin[(name, "test")])
        _trade(task, f, "test", bucket[name])
    ensemble = None
    if ens is not None:
        per_origin[(ENSEMBLE, "test")] = _ensemble_scores(task, list(test.values()), ens.weights, "test", bands)
        ensemble = EnsembleResult(
            ens.weights,
            mean_scores(per_origin[(ENSEMBLE, "val")]),
            mean_scores(per_origin[(ENSEMBLE, "test")]),
            ens.history,
        )
    out = SymbolResult(task.series.symbol, chosen, results, baseline, "tuned" if tuned else "defaults", ensemble)
    out.per_origin, out.rule, out.why, out.bands = per_origin, rule, why, bands
    if chosen is None:
        return out

    def compare(a: str, b: str, on: str = metric) -> dict[str, Comparison]:
        return {
            s: paired_bootstrap(per_origin[(a, s)][on], per_origin[(b, s)][on], on, h, seed) for s in ("val", "test")
        }

    if chosen != base_key:  # naive against itself says nothing
        out.comparisons["chosen_vs_naive"] = compare(chosen, base_key)
    runner_up = next((b for b in ranked if b != chosen), None)
    if runner_up is not None:
        out.comparisons["chosen_vs_runner_up"] = compare(chosen, runner_up)
    if ensemble is not None:
        out.comparisons["ensemble_vs_chosen"] = compare(ENSEMBLE, chosen)
    return out
