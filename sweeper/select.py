"""Selection for one symbol: the best knobs of each backend on validation, then one winner.

The winner is fixed from validation scores alone; only then are test origins forecast and scored, once,
for the report. Every comparison with the naive floor and with the runner-up carries a block-bootstrap
interval over origins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sweeper.backends import BASELINE
from sweeper.compare import Comparison, paired_bootstrap
from sweeper.metrics import HIGHER_IS_BETTER
from sweeper.objective import Candidate, SymbolTask, mean_scores


@dataclass
class BackendResult:
    backend: str
    params: dict[str, Any] | None
    trials: int
    val: dict[str, float] | None = None
    test: dict[str, float] | None = None
    error: str | None = None


@dataclass
class SymbolResult:
    symbol: str
    chosen: str | None
    backends: dict[str, BackendResult]
    baseline: BackendResult
    baseline_source: str  # "tuned" when naive was searched, "defaults" otherwise
    comparisons: dict[str, dict[str, Comparison]] = field(default_factory=dict)
    per_origin: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)


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
    per_origin: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    ranked: list[tuple[float, str]] = []
    for b, r in results.items():
        if r.params is None:
            continue
        per_origin[(b, "val")] = task.scores(Candidate(b, r.params), "val")
        r.val = mean_scores(per_origin[(b, "val")])
        ranked.append((r.val[metric], b))
    if BASELINE in results and results[BASELINE].params is not None:
        baseline, source = results[BASELINE], "tuned"
    else:
        defaults = task.spaces[BASELINE].defaults()
        baseline, source = BackendResult(BASELINE, defaults, 0), "defaults"
        per_origin[("baseline", "val")] = task.scores(Candidate(BASELINE, defaults or {}), "val")
        baseline.val = mean_scores(per_origin[("baseline", "val")])
    ranked.sort(reverse=metric in HIGHER_IS_BETTER)
    chosen = ranked[0][1] if ranked else None
    # -- selection is final here; test origins are touched from this line on --
    for b, r in results.items():
        if r.params is not None:
            per_origin[(b, "test")] = task.scores(Candidate(b, r.params), "test")
            r.test = mean_scores(per_origin[(b, "test")])
    base_key = BASELINE if source == "tuned" else "baseline"
    if source == "defaults":
        per_origin[("baseline", "test")] = task.scores(Candidate(BASELINE, baseline.params or {}), "test")
        baseline.test = mean_scores(per_origin[("baseline", "test")])
    out = SymbolResult(task.series.symbol, chosen, results, baseline, source, per_origin=per_origin)
    if chosen is None:
        return out
    h = task.plan.protocol.horizon
    out.comparisons["chosen_vs_naive"] = {
        s: paired_bootstrap(per_origin[(chosen, s)][metric], per_origin[(base_key, s)][metric], metric, h, seed)
        for s in ("val", "test")
    }
    if len(ranked) > 1:
        runner = ranked[1][1]
        out.comparisons["chosen_vs_runner_up"] = {
            s: paired_bootstrap(per_origin[(chosen, s)][metric], per_origin[(runner, s)][metric], metric, h, seed)
            for s in ("val", "test")
        }
    return out
