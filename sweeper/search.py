"""The Optuna engine: one study per (symbol, backend), a seeded TPE sampler, storage in the run folder.

Studies persist in the storage (SQLite file by default), so a killed sweep resumes: finished trials are
kept, a trial that was running when the process died is marked failed and its knobs are queued again.

Multi-fidelity (on unless `--no-prune`, for a single objective without a latency budget): each trial
reports its running validation mean after every chunk of origins, and Optuna's successive-halving pruner
stops those behind at a rung (`optuna_report`, the hook any step-by-step evaluation can use). A pruned
trial is PRUNED in the study and in trials.parquet, valued at its last running mean, and is never selected.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState
from sqlalchemy import event

from sweeper.metric import get
from sweeper.objective import Report, SymbolTask, objective, recorded_means
from sweeper.space import Space

# A failed trial is recorded (user attribute `error`, trials.parquet, the config's `error`) and reported once
# per backend in one line; Optuna's own warning, a traceback per failed trial, would bury that line.
optuna.logging.set_verbosity(optuna.logging.ERROR)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
CAUGHT = (ValueError, FloatingPointError)  # a trial failing this way fails alone; anything else stops the sweep
ERROR = "error"  # user attr: why a trial failed
INTERRUPTED = "interrupted"  # user attr of a trial whose process died; it does not use up the budget
OWNER = "owner"  # user attr "host:pid" of the --jobs worker running a trial, so recovery spares live ones


@dataclass(frozen=True)
class Budget:
    trials: int
    timeout: float | None = None  # seconds per study


@dataclass(frozen=True)
class StudySettings:
    """What every engine needs to run a study; `namespace` keeps runs apart in a shared --storage."""

    storage: str
    objectives: tuple[str, ...]
    budget: Budget
    seed: int
    namespace: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)  # study user attributes: run, metric, lake
    prune: bool = True  # multi-fidelity: report every chunk of validation origins, stop trials behind


def pruner(prune: bool) -> optuna.pruners.BasePruner:
    """Successive halving over chunks of origins: at steps 1, 2, 4, ... a trial goes on only when it is in
    the better half of the trials that reached that step."""
    if not prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)


def optuna_report(trial: optuna.Trial) -> Report:
    """The multi-fidelity hook of the Optuna engines: record (step, value) with the trial and ask its pruner
    whether to stop. Any loop that scores a trial step by step (origins, training steps) can use it."""

    def report(step: int, value: float) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    return report


def study_name(symbol: str, backend: str, namespace: str = "") -> str:
    return f"{namespace}:{symbol}--{backend}" if namespace else f"{symbol}--{backend}"


def namespace_for(run_id: str, storage: str | None) -> str:
    """Studies in a storage that runs share (--storage URL) carry the run id; the run folder's own SQLite
    file or journal needs none."""
    return run_id if storage and storage != JOURNAL else ""


def study_label(symbol: str, backend: str) -> str:
    """How progress bars name a study."""
    return f"{symbol} {backend}"


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as the psycopg 3 driver; this project ships psycopg2."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


JOURNAL = "journal"  # --storage journal: Optuna's append-only journal file in the run folder


@functools.cache
def storage_for(url: str) -> optuna.storages.BaseStorage:
    """One storage per URL and process. SQLite runs in WAL mode: a commit per trial without a full fsync,
    still safe against a killed process (only a power cut can lose the last trials). `journal:PATH` is
    Optuna's journal file: about 4x less overhead per trial than SQLite (see README, Benchmark)."""
    if url.startswith(f"{JOURNAL}:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix(f"{JOURNAL}:")))
    storage = optuna.storages.RDBStorage(driver_url(url))
    if url.startswith("sqlite"):

        @event.listens_for(storage.engine, "connect")
        def _wal(dbapi_con: Any, _record: Any) -> None:
            dbapi_con.execute("PRAGMA journal_mode=WAL")
            dbapi_con.execute("PRAGMA synchronous=NORMAL")

        storage.engine.dispose()
    return storage


def open_study(
    storage: str,
    symbol: str,
    backend: str,
    objectives: tuple[str, ...],
    seed: int,
    namespace: str = "",
    worker: int | None = None,
    prune: bool = False,
) -> optuna.Study:
    """Seeded TPE for one objective; NSGA-II for several (a Pareto front, e.g. CRPS vs latency); the
    successive-halving pruner when `prune`.

    Each of several parallel `worker`s gets its own seed, and TPE the constant liar (running trials count
    as bad ones), so the workers do not all propose the same knobs."""
    name = study_name(symbol, backend, namespace)
    study_seed = (seed + zlib.crc32(name.encode()) + (0 if worker is None else 7919 * (worker + 1))) % 2**31
    if len(objectives) == 1:
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            seed=study_seed, constant_liar=worker is not None
        )
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=study_seed)
    study = optuna.create_study(
        study_name=name,
        storage=storage_for(storage),
        sampler=sampler,
        pruner=pruner(prune and len(objectives) == 1),
        directions=[get(m).direction for m in objectives],
        load_if_exists=True,
    )
    if study.metric_names != list(objectives):  # what optuna-dashboard and the Optuna CLI name the values
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and still so in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(objectives))
    return study


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether the worker that claimed a trial still runs. Another host's worker is taken as alive: only
    that host can tell, and it recovers its own trials when it starts again."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    if Path("/proc/self/stat").exists():  # Linux: a killed worker may linger as an unreaped zombie
        try:
            return Path(f"/proc/{int(pid)}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, run by another user
        pass
    return True


def recover(study: optuna.Study) -> int:
    """Fail trials left RUNNING by a killed process and queue their knobs again; returns how many.

    A trial claimed by a `--jobs` worker that is still alive (on this host or another) is left alone."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [t for t in running if not (OWNER in t.user_attrs and owner_alive(t.user_attrs[OWNER]))]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:  # not skip_if_exists: the failed trial itself holds these params
            study.enqueue_trial(t.params)
    return len(stale)


def finished(study: optuna.Study) -> int:
    """Trials that count against the budget: every finished one but those cut short by a killed process."""
    return sum(not t.user_attrs.get(INTERRUPTED) for t in study.get_trials(deepcopy=False, states=FINISHED))


def prepare_study(task: SymbolTask, backend: str, s: StudySettings) -> optuna.Study:
    """Open the study, recover trials of dead processes, and queue the defaults as trial 0 of a new study."""
    study = open_study(s.storage, task.series.symbol, backend, s.objectives, s.seed, s.namespace, prune=s.prune)
    recover(study)
    protocol = task.plan.protocol
    attrs = {**s.attrs, "symbol": task.series.symbol, "freq": task.series.freq, "horizon": protocol.horizon}
    for k, v in {**attrs, "backend": backend}.items():
        if study.user_attrs.get(k) != v:  # a resumed study has them: no writes
            study.set_user_attr(k, v)
    if not study.trials:
        defaults = task.spaces[backend].defaults()
        if defaults is not None:
            study.enqueue_trial(task.spaces[backend].optuna_params(defaults))
    return study


def run_study(
    task: SymbolTask, backend: str, s: StudySettings, on_trial: Callable[[optuna.Study], None] | None = None
) -> optuna.Study:
    """Run the trials still missing from the study's budget."""
    study = prepare_study(task, backend, s)
    remaining = s.budget.trials - finished(study)
    if remaining > 0:
        callbacks = [lambda st, _t: on_trial(st)] if on_trial else None
        prune = s.prune and len(s.objectives) == 1

        def interruptible(trial: optuna.Trial) -> float | tuple:
            try:
                return objective(trial, task, backend, s.objectives, optuna_report(trial) if prune else None)
            except KeyboardInterrupt:  # Ctrl-C: treated like a killed process, so a resume redoes this trial
                trial.set_user_attr(INTERRUPTED, True)
                if trial.params:
                    study.enqueue_trial(trial.params)
                raise
            except CAUGHT as exc:  # a failed trial; Optuna only logs why, so keep the reason with the trial
                trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}")
                raise

        study.optimize(
            interruptible,
            n_trials=remaining,
            timeout=s.budget.timeout,
            callbacks=callbacks,
            catch=CAUGHT,
        )
    return study


class Engine(Protocol):
    """Runs studies: a context manager (for what it starts and stops) whose `run` fills one study's budget."""

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(
        self, task: SymbolTask, backend: str, on_trial: Callable[[optuna.Study], None] | None = None
    ) -> optuna.Study: ...


class OptunaEngine:
    """The default engine: this process runs each study's trials in turn."""

    def __init__(self, settings: StudySettings) -> None:
        self.settings = settings

    def __enter__(self) -> OptunaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(
        self, task: SymbolTask, backend: str, on_trial: Callable[[optuna.Study], None] | None = None
    ) -> optuna.Study:
        return run_study(task, backend, self.settings, on_trial)


def best_params(study: optuna.Study, space: Space, metric: str, latency_budget: float | None = None) -> dict | None:
    """The most accurate completed trial on `metric`, among those within the latency budget if one is set."""
    done = [(t, recorded_means(t)) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    done = [(t, m) for t, m in done if metric in m]
    if latency_budget is not None:
        done = [(t, m) for t, m in done if m["latency_s"] <= latency_budget]
    if not done:
        return None
    sign = get(metric).sign
    return space.values(min(done, key=lambda tm: (sign * tm[1][metric], tm[0].number))[0].params)


def no_completed_trial(study: optuna.Study) -> str:
    """Why a study has nothing to select: how its trials ended, and the last failure's reason."""
    trials = study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED)]
    why = f": {failed[-1].user_attrs[ERROR]}" if failed and ERROR in failed[-1].user_attrs else ""
    return f"no trial completed ({len(failed)} of {len(trials)} failed{why})"


def pareto(study: optuna.Study, space: Space) -> list[dict]:
    """The Pareto front of a multi-objective study: knobs and objective values."""
    return [{"number": t.number, "params": space.values(t.params), "values": t.values} for t in study.best_trials]
