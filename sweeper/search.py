"""The Optuna engine: one study per (symbol, backend), a seeded TPE sampler, storage in the run folder.

Studies persist in the storage (SQLite file by default), so a killed sweep resumes: finished trials are
kept, a trial that was running when the process died is marked failed and its knobs are queued again.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy import event

from sweeper.metrics import direction
from sweeper.objective import VAL_MEANS, SymbolTask, objective

optuna.logging.set_verbosity(optuna.logging.WARNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
INTERRUPTED = "interrupted"  # user attr of a trial whose process died; it does not use up the budget


@dataclass(frozen=True)
class Budget:
    trials: int
    timeout: float | None = None  # seconds per study


def study_name(symbol: str, backend: str) -> str:
    return f"{symbol}--{backend}"


@functools.cache
def storage_for(url: str) -> optuna.storages.BaseStorage:
    """One RDB storage per URL and process. SQLite runs in WAL mode: a commit per trial without a full
    fsync, still safe against a killed process (only a power cut can lose the last trials)."""
    storage = optuna.storages.RDBStorage(url)
    if url.startswith("sqlite"):

        @event.listens_for(storage.engine, "connect")
        def _wal(dbapi_con: Any, _record: Any) -> None:
            dbapi_con.execute("PRAGMA journal_mode=WAL")
            dbapi_con.execute("PRAGMA synchronous=NORMAL")

        storage.engine.dispose()
    return storage


def open_study(storage: str, symbol: str, backend: str, objectives: tuple[str, ...], seed: int) -> optuna.Study:
    """Seeded TPE for one objective; NSGA-II for several (a Pareto front, e.g. CRPS vs latency)."""
    name = study_name(symbol, backend)
    study_seed = (seed + zlib.crc32(name.encode())) % 2**31
    if len(objectives) == 1:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=study_seed)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=study_seed)
    return optuna.create_study(
        study_name=name,
        storage=storage_for(storage),
        sampler=sampler,
        directions=[direction(m) for m in objectives],
        load_if_exists=True,
    )


def recover(study: optuna.Study) -> int:
    """Fail trials left RUNNING by a killed process and queue their knobs again; returns how many."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=True)
    return len(stale)


def finished(study: optuna.Study) -> int:
    """Trials that count against the budget: every finished one but those cut short by a killed process."""
    return sum(not t.user_attrs.get(INTERRUPTED) for t in study.get_trials(deepcopy=False, states=FINISHED))


def run_study(
    task: SymbolTask,
    backend: str,
    storage: str,
    objectives: tuple[str, ...],
    budget: Budget,
    seed: int,
    on_trial: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Run the trials still missing from the study's budget."""
    study = open_study(storage, task.series.symbol, backend, objectives, seed)
    recover(study)
    if not study.trials:
        defaults = task.spaces[backend].defaults()
        if defaults is not None:
            study.enqueue_trial(defaults)
    remaining = budget.trials - finished(study)
    if remaining > 0:
        callbacks = [lambda s, _t: on_trial(s)] if on_trial else None
        study.optimize(
            lambda trial: objective(trial, task, backend, objectives),
            n_trials=remaining,
            timeout=budget.timeout,
            callbacks=callbacks,
            catch=(ValueError, FloatingPointError),
        )
    return study


def best_params(study: optuna.Study, metric: str, latency_budget: float | None = None) -> dict | None:
    """The most accurate completed trial on `metric`, among those within the latency budget if one is set."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if VAL_MEANS in t.user_attrs]
    if latency_budget is not None:
        done = [t for t in done if t.user_attrs[VAL_MEANS]["latency_s"] <= latency_budget]
    if not done:
        return None
    sign = 1.0 if direction(metric) == "minimize" else -1.0
    return dict(min(done, key=lambda t: (sign * t.user_attrs[VAL_MEANS][metric], t.number)).params)


def pareto(study: optuna.Study) -> list[dict]:
    """The Pareto front of a multi-objective study: knobs and objective values."""
    return [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
