"""The studies every engine shares: one Optuna study per (symbol, backend), a seeded TPE sampler, storage in
the run folder, and what a finished study hands to selection (`StudyOutcome`). The engines that fill the
studies with trials are in sweeper/engines/.

Studies persist in the storage (the run folder's journal file by default, `sweeper.journal`), so a killed
sweep resumes: finished trials are kept, a trial that was running when the process died is marked failed
and its knobs are queued again.

Multi-fidelity (on unless `--no-prune`, for a single objective without a latency budget): each trial
reports its running validation mean after every chunk of origins, and Optuna's successive-halving pruner
stops those behind at a rung (`Halving`; `optuna_report`, the hook any step-by-step evaluation can use). A pruned
trial is PRUNED in the study and in trials.parquet, valued at its last running mean, and is never selected.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import socket
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event

from sweeper.errors import SweepError
from sweeper.metric import get
from sweeper.objective import Report, SymbolTask, recorded_means, storage_trial
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

    @property
    def prunes(self) -> bool:
        """Whether trials are pruned: asked for, and a single objective (Optuna prunes no other study)."""
        return self.prune and len(self.objectives) == 1


class _Counted:
    """A study as a pruner should see it: without the trials a killed process cut short. Such a trial runs
    again under a new number, so counting its rungs too would rank later trials against one value more
    than in the run that was never stopped. Everything but `get_trials` is the study's own."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if not t.user_attrs.get(INTERRUPTED)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class Halving(optuna.pruners.BasePruner):
    """Optuna's successive halving over chunks of origins (at steps 1, 2, 4, ... a trial goes on only when
    it is in the better half of the trials that reached that step), ranked among the trials that count
    (`_Counted`), so a resumed run prunes exactly the trials the uninterrupted one pruned."""

    def __init__(self) -> None:
        self._inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self._inner.prune(_Counted(study), trial)  # type: ignore[arg-type]


def pruner(prune: bool) -> optuna.pruners.BasePruner:
    """`Halving` when multi-fidelity is on, else Optuna's no-op pruner."""
    return Halving() if prune else optuna.pruners.NopPruner()


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
    """Studies in a storage that runs share (--storage URL) carry the run id; the run folder's own journal
    or SQLite file needs none."""
    return run_id if storage and storage not in LOCAL else ""


def study_label(symbol: str, backend: str) -> str:
    """How progress bars name a study."""
    return f"{symbol} {backend}"


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as the psycopg 3 driver; this project ships psycopg2."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


JOURNAL = "journal"  # --storage journal (the default): Optuna's append-only journal file in the run folder
SQLITE = "sqlite"  # --storage sqlite: a SQLite file in the run folder
LOCAL = (JOURNAL, SQLITE)  # the run folder's own stores


@functools.cache
def storage_for(url: str) -> optuna.storages.BaseStorage:
    """One storage per URL and process. `journal:PATH` is Optuna's journal file, appended whole lines or
    nothing (`sweeper.journal`). SQLite runs in WAL mode: a commit per trial without a full fsync, still
    safe against a killed process (only a power cut can lose the last trials)."""
    if url.startswith(f"{JOURNAL}:"):
        from sweeper.journal import JournalFile

        return optuna.storages.JournalStorage(JournalFile(url.removeprefix(f"{JOURNAL}:")))
    storage = optuna.storages.RDBStorage(driver_url(url))
    if url.startswith("sqlite"):

        @event.listens_for(storage.engine, "connect")
        def _wal(dbapi_con: Any, _record: Any) -> None:
            dbapi_con.execute("PRAGMA journal_mode=WAL")
            dbapi_con.execute("PRAGMA synchronous=NORMAL")

        storage.engine.dispose()
    return storage


def check_storage(storage: str | None) -> None:
    """A --storage other than the run folder's own is opened before anything is written, so a malformed
    or unreachable URL is one line (password hidden) and leaves no run folder behind."""
    if storage is None or storage in LOCAL:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    rule = "use journal, sqlite, sqlite:///PATH or postgresql://USER@HOST/DB"
    try:
        url = make_url(storage)
    except (ArgumentError, ValueError):
        raise SweepError(f"invalid --storage {storage.split('://')[0]!r}...: not a database URL; {rule}") from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() not in ("sqlite", "postgresql") or (
        url.get_backend_name() == "sqlite" and not url.database
    ):
        raise SweepError(f"invalid --storage {shown}: {rule}")
    try:
        storage_for(storage)
    except Exception as exc:  # the driver's own error: unknown host, refused, no such folder, not a database
        why = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        raise SweepError(f"--storage {shown} cannot be opened: {type(exc).__name__}: {why}") from None


class TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler whose draws for a trial depend only on the seed and the trial's place in the study.

    Optuna's seeded TPE draws from one random stream per process, so a resumed process (a fresh stream)
    proposes other knobs than the uninterrupted run would have. Here each trial gets a sampler seeded
    from (seed, place), where place counts the study's earlier trials that were not interrupted: the
    re-queued trial of a killed one takes its place, and every later trial sees the same finished trials
    and the same seed as in a run that was never stopped. So a resumed run proposes the same knobs and
    selects the same configuration (`tests/test_edges.py::test_resumed_run_equals_the_uninterrupted_one`).
    """

    def __init__(self, seed: int, make: Callable[[int], optuna.samplers.BaseSampler]) -> None:
        self._seed = seed
        self._make = make
        self._inner = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        place = sum(
            t.number < trial.number and not t.user_attrs.get(INTERRUPTED) for t in study.get_trials(deepcopy=False)
        )
        self._inner = self._make(int(np.random.SeedSequence([self._seed, place]).generate_state(1)[0] >> 1))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, dist: Any) -> Any:
        return self._inner.sample_independent(study, trial, name, dist)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _tpe(constant_liar: bool, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, constant_liar=constant_liar)


def open_study(s: StudySettings, symbol: str, backend: str, worker: int | None = None) -> optuna.Study:
    """The study of (symbol, backend) under the settings: seeded TPE for one objective; NSGA-II for several
    (a Pareto front, e.g. CRPS vs latency); the successive-halving pruner when the settings prune.

    Each of several parallel `worker`s gets its own seed, and TPE the constant liar (running trials count
    as bad ones), so the workers do not all propose the same knobs."""
    name = study_name(symbol, backend, s.namespace)
    study_seed = (s.seed + zlib.crc32(name.encode()) + (0 if worker is None else 7919 * (worker + 1))) % 2**31
    if len(s.objectives) == 1:
        sampler: optuna.samplers.BaseSampler = TrialSeeded(study_seed, functools.partial(_tpe, worker is not None))
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=study_seed)
    study = optuna.create_study(
        study_name=name,
        storage=storage_for(s.storage),
        sampler=sampler,
        pruner=pruner(s.prunes),
        directions=[get(m).direction for m in s.objectives],
        load_if_exists=True,
    )
    if study.metric_names != list(s.objectives):  # what optuna-dashboard and the Optuna CLI name the values
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and still so in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(s.objectives))
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


def knobs_of(trial: FrozenTrial) -> dict[str, Any]:
    """The knobs a trial ran or was about to run: its params, else those it was queued with (a queued
    trial killed before its first suggestion has no params yet). Optuna has no public accessor of the
    queued params: `Study.enqueue_trial` keeps them in the system attribute "fixed_params", which
    `tests/test_faults.py::test_a_queued_trial_killed_before_its_first_suggestion_is_queued_again` pins."""
    return dict(trial.params or trial.system_attrs.get("fixed_params") or {})


def recover(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Fail trials left RUNNING by a killed process and queue their knobs again; returns how many.

    A trial claimed by a `--jobs` worker that is still alive (on this host or another) is left alone. The
    state is set in the storage, as the process that died would have: `Study.tell` would also hand the
    trial to the sampler, which never saw it start."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [t for t in running if not (OWNER in t.user_attrs and owner_alive(t.user_attrs[OWNER]))]
    for t in stale:
        trial_id = storage_trial(storage, study, t.number)
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if knobs := knobs_of(t):  # not skip_if_exists: the failed trial itself holds these params
            study.enqueue_trial(knobs)
    return len(stale)


def record_failure(trial: optuna.Trial, exc: BaseException) -> None:
    """Keep why a trial failed (a CAUGHT error) with the trial: Optuna only logs it."""
    trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}")


def finished(study: optuna.Study) -> int:
    """Trials that count against the budget: every finished one but those cut short by a killed process."""
    return sum(not t.user_attrs.get(INTERRUPTED) for t in study.get_trials(deepcopy=False, states=FINISHED))


def prepare_study(task: SymbolTask, backend: str, s: StudySettings) -> optuna.Study:
    """Open the study, recover trials of dead processes, and queue the defaults as trial 0 of a new study."""
    study = open_study(s, task.series.symbol, backend)
    recover(study, storage_for(s.storage))
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


class Interrupts:
    """Where a stop signal (Ctrl-C, SIGTERM, SIGHUP) may land while trials run.

    Inside a trial's own code it raises at once, so the trial is marked interrupted and queued again.
    Inside Optuna's bookkeeping between trials (asking for a trial, telling its result) it is held
    until the next trial starts or the study ends: an exception there would leave Optuna's own state
    half written (its `_run_trial` then fails with an UnboundLocalError instead). Every signal is also
    kept until a trial handles it: one that lands in a garbage-collector callback (SQLAlchemy closes
    connections there) is swallowed by Python ("Exception ignored in ..."), and the next check raises
    it again instead of letting the run finish as if nothing had been asked."""

    def __init__(self) -> None:
        self.in_optimize = False
        self.in_trial = False
        self.pending: int | None = None
        self.cut = False  # the trial ending now was cut short: Optuna's failure log of it is muted

    def filter(self, record: logging.LogRecord) -> bool:
        """A logging filter: Optuna logs a trial that raised with its traceback; for a trial cut short
        (re-queued, nothing failed) that would bury the one line the CLI prints."""
        return not self.cut

    def signal(self, signum: int) -> None:
        self.pending = signum
        if self.in_optimize and not self.in_trial:
            return
        raise KeyboardInterrupt(signum)

    def check(self) -> None:
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(signum)


INTERRUPTS = Interrupts()
# Optuna logs a failed trial through the logger of its private module `optuna.study._optimize`, with no public
# hook to mute one trial; tests/test_faults.py::test_sigterm_exits_143_and_resume_redoes_the_cut_trial pins it
logging.getLogger("optuna.study._optimize").addFilter(INTERRUPTS.filter)


def requeue(study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial cut short by a signal or by the machine (disk full, out of memory): mark it interrupted, so
    it does not use up the budget, and queue its knobs again. Best effort: when the storage itself cannot
    write (a full disk), the trial stays RUNNING and the next start's `recover` does the same."""
    INTERRUPTS.cut = True
    with contextlib.suppress(Exception):
        trial.set_user_attr(INTERRUPTED, True)
        if knobs := knobs_of(trial.storage.get_trial(storage_trial(trial.storage, study, trial.number))):
            study.enqueue_trial(knobs)


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


@dataclass(frozen=True)
class StudyOutcome:
    """What selection takes from one (symbol, backend) study: the best knobs on validation, how the
    trials ended, why there is no best (`error`), and the Pareto front of a multi-objective study. A
    backend that could not load has an outcome too: no trials, and why."""

    params: dict[str, Any] | None = None
    complete: int = 0  # trials scored on every validation origin
    pruned: int = 0  # trials the multi-fidelity search stopped early (never selected)
    error: str | None = None
    front: list[dict] | None = None  # multi-objective studies only


def outcome(study: optuna.Study, space: Space, metric: str, latency_budget: float | None = None) -> StudyOutcome:
    """A finished study as selection sees it: its best trial on `metric` (within the latency budget)."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete = states.count(TrialState.COMPLETE)
    params = best_params(study, space, metric, latency_budget)
    error = None
    if not complete:
        error = no_completed_trial(study)
    elif params is None and latency_budget is not None:
        error = f"no configuration within the latency budget of {latency_budget:g} s per origin"
    front = pareto(study, space) if len(study.directions) > 1 else None
    return StudyOutcome(params, complete, states.count(TrialState.PRUNED), error, front)
