"""Selection for one symbol: the best knobs of each backend on validation, one winner, an ensemble.

The winner and the ensemble weights are fixed from validation scores alone; only then are test origins
forecast and scored, once, for the report. Every comparison (winner vs naive, winner vs runner-up,
ensemble vs winner) carries a block-bootstrap interval over origins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sweeper import metrics
from sweeper.backends import BASELINE
from sweeper.compare import Comparison, paired_bootstrap
from sweeper.ensemble import greedy, mixture
from sweeper.metrics import HIGHER_IS_BETTER
from sweeper.objective import Candidate, Forecast, SymbolTask, mean_scores
from sweeper.trading import sign_strategy

ENSEMBLE = "ensemble"
REFERENCE = "baseline"  # the naive floor when naive itself was not searched


@dataclass
class BackendResult:
    backend: str
    params: dict[str, Any] | None
    trials: int
    val: dict[str, float] | None = None
    test: dict[str, float] | None = None
    error: str | None = None
    trading: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> sign-strategy read-out


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


def _ensemble_scores(task: SymbolTask, members: list[Forecast], weights: dict[str, float], split: str) -> dict:
    samples, w, point, latency = mixture(members, weights)
    return metrics.score(samples, point, task.truth(split), latency, weights=w)


def _trade(task: SymbolTask, f: Forecast, split: str, into: BackendResult) -> None:
    """The sign-strategy read-out of the point forecast (10 bp costs, one-bar lag); needs stride-1 origins."""
    if task.plan.protocol.stride == 1:
        t = task.truth(split)
        into.trading[split] = sign_strategy(f.point, t.last_close, t.y).to_dict()


def select(
    task: SymbolTask,
    best: dict[str, tuple[dict[str, Any] | None, int]],
    metric: str,
    seed: int = 0,
    errors: dict[str, str] | None = None,
) -> SymbolResult:
    """`best` maps backend -> (best params on validation or None, completed trials)."""
    errors = errors or {}
    results = {b: BackendResult(b, p, n, error=errors.get(b)) for b, (p, n) in best.items()}
    results.update({b: BackendResult(b, None, 0, error=e) for b, e in errors.items() if b not in results})
    cands = {b: Candidate(b, r.params) for b, r in results.items() if r.params is not None}
    tuned = BASELINE in cands
    base_key = BASELINE if tuned else REFERENCE
    if not tuned:
        cands[REFERENCE] = Candidate(BASELINE, task.spaces[BASELINE].defaults() or {})
    baseline = results[BASELINE] if tuned else BackendResult(BASELINE, cands[REFERENCE].params, 0)
    bucket = {**results, REFERENCE: baseline}

    per_origin: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    val = {name: task.forecast(c, "val", name) for name, c in cands.items()}
    for name, f in val.items():
        per_origin[(name, "val")] = metrics.score(f.samples, f.point, task.truth("val"), f.latency_s, presorted=True)
        bucket[name].val = mean_scores(per_origin[(name, "val")])
        _trade(task, f, "val", bucket[name])
    ranked = sorted(((bucket[b].val[metric], b) for b in results if b in cands), reverse=metric in HIGHER_IS_BETTER)
    chosen = ranked[0][1] if ranked else None
    ens = greedy(list(val.values()), task.truth("val").y) if len(val) > 1 else None
    if ens is not None:
        per_origin[(ENSEMBLE, "val")] = _ensemble_scores(task, list(val.values()), ens.weights, "val")
    del val
    # -- selection and weights are final here; test origins are touched from this line on --
    test = {name: task.forecast(c, "test", name) for name, c in cands.items()}
    for name, f in test.items():
        per_origin[(name, "test")] = metrics.score(f.samples, f.point, task.truth("test"), f.latency_s, presorted=True)
        bucket[name].test = mean_scores(per_origin[(name, "test")])
        _trade(task, f, "test", bucket[name])
    ensemble = None
    if ens is not None:
        per_origin[(ENSEMBLE, "test")] = _ensemble_scores(task, list(test.values()), ens.weights, "test")
        ensemble = EnsembleResult(
            ens.weights,
            mean_scores(per_origin[(ENSEMBLE, "val")]),
            mean_scores(per_origin[(ENSEMBLE, "test")]),
            ens.history,
        )
    out = SymbolResult(task.series.symbol, chosen, results, baseline, "tuned" if tuned else "defaults", ensemble)
    out.per_origin = per_origin
    if chosen is None:
        return out
    h = task.plan.protocol.horizon

    def compare(a: str, b: str, on: str = metric) -> dict[str, Comparison]:
        return {
            s: paired_bootstrap(per_origin[(a, s)][on], per_origin[(b, s)][on], on, h, seed) for s in ("val", "test")
        }

    if chosen != base_key:  # naive against itself says nothing
        out.comparisons["chosen_vs_naive"] = compare(chosen, base_key)
    if len(ranked) > 1:
        out.comparisons["chosen_vs_runner_up"] = compare(chosen, ranked[1][1])
    if ensemble is not None:
        out.comparisons["ensemble_vs_chosen"] = compare(ENSEMBLE, chosen, "crps")
    return out
