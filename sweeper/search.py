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
from sweeper.objective import SymbolTask, objective

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


def open_study(storage: str, symbol: str, backend: str, metric: str, seed: int) -> optuna.Study:
    name = study_name(symbol, backend)
    sampler = optuna.samplers.TPESampler(seed=(seed + zlib.crc32(name.encode())) % 2**31)
    return optuna.create_study(
        study_name=name, storage=storage_for(storage), sampler=sampler, direction=direction(metric), load_if_exists=True
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
    metric: str,
    budget: Budget,
    seed: int,
    on_trial: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Run the trials still missing from the study's budget."""
    study = open_study(storage, task.series.symbol, backend, metric, seed)
    recover(study)
    if not study.trials:
        defaults = task.spaces[backend].defaults()
        if defaults is not None:
            study.enqueue_trial(defaults)
    remaining = budget.trials - finished(study)
    if remaining > 0:
        callbacks = [lambda s, _t: on_trial(s)] if on_trial else None
        study.optimize(
            lambda trial: objective(trial, task, backend, metric),
            n_trials=remaining,
            timeout=budget.timeout,
            callbacks=callbacks,
            catch=(ValueError, FloatingPointError),
        )
    return study


def best_params(study: optuna.Study) -> dict | None:
    try:
        return dict(study.best_trial.params)
    except ValueError:  # no completed trial
        return None
