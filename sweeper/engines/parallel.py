"""Several Optuna worker processes on the same studies: `sweep run --jobs N`.

Entering sets up a pool of N worker processes (spawned at the first study, each handed the sweep's tasks
once); `run` sets all N on one (symbol, backend) study, so a study fills up N trials at a time, and each
worker keeps its loaded models from one study to the next. A worker claims a trial
under a lock held by the storage itself (a PostgreSQL advisory lock, or a lock file beside the SQLite
database): it counts the study's running and finished trials and asks Optuna for a new one only while
that count is below the budget. So the budget is exact however many workers, or machines on one
PostgreSQL URL, share a study; trial numbers are unique because the storage assigns them. Each claimed
trial carries its worker's host and pid (`search.OWNER`), so a restarted run recovers only the trials of
workers that died, and leaves alone those of another machine still at work.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import optuna
import sqlalchemy
from optuna.trial import TrialState

from sweeper.atomic import locked
from sweeper.engines.base import Engine, OnTrial, set_threads
from sweeper.errors import SweepError, machine_fault
from sweeper.objective import SymbolTask, objective
from sweeper.search import (
    CAUGHT,
    FINISHED,
    INTERRUPTED,
    JOURNAL,
    OWNER,
    StudySettings,
    open_study,
    optuna_report,
    owner_id,
    prepare_study,
    record_failure,
    requeue,
    storage_for,
    study_name,
)

POLL_S = 0.5  # how often the parent reads the studies to draw progress


@contextlib.contextmanager
def study_lock(url: str, name: str) -> Iterator[None]:
    """An exclusive lock on one study, held by the storage, so it works across processes and machines."""
    if url.startswith("postgresql"):
        with storage_for(url).engine.begin() as con:  # released when this transaction ends
            con.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(name.encode())})
            yield
    elif url.startswith("sqlite"):
        with locked(Path(f"{sqlalchemy.engine.make_url(url).database}.lock")):
            yield
    else:  # the journal file (its own appends lock `PATH.lock`)
        with locked(Path(f"{url.removeprefix(f'{JOURNAL}:')}.claims.lock")):
            yield


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(parent: int) -> None:
    """Run in each worker as it starts: end this worker when `parent` (the `sweep run` process) dies, even by
    SIGKILL, which leaves no chance to stop its pool. Linux delivers SIGKILL to the worker when its parent
    exits (prctl PR_SET_PDEATHSIG); elsewhere a thread checks for the parent every POLL_S seconds. The
    trial the worker was running stays RUNNING under its dead owner and is re-queued on --resume."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(POLL_S)
            os._exit(1)

        threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def claimed(study: optuna.Study) -> int:
    """Trials that hold a share of the budget: running ones and finished ones (not interrupted). One read:
    a trial that finishes between two reads would be counted in neither."""
    return sum(
        t.state == TrialState.RUNNING or (t.state in FINISHED and not t.user_attrs.get(INTERRUPTED))
        for t in study.get_trials(deepcopy=False)
    )


def claim(study: optuna.Study, url: str, budget: int) -> optuna.Trial | None:
    """A new trial of the study, or None once the budget is taken."""
    with study_lock(url, study.study_name):
        if claimed(study) >= budget:
            return None
        trial = study.ask()  # pops a queued trial (defaults, requeued knobs) first
        trial.set_user_attr(OWNER, owner_id())
        return trial


def drain(study: optuna.Study, task: SymbolTask, backend: str, s: StudySettings) -> None:
    """Claim and run trials of one study until its budget is taken or its timeout has passed."""
    deadline = time.monotonic() + (s.budget.timeout or float("inf"))
    while time.monotonic() < deadline and (trial := claim(study, s.storage, s.budget.trials)) is not None:
        try:
            value = objective(trial, task, backend, s.objectives, optuna_report(trial) if s.prunes else None)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        except CAUGHT as exc:  # as study.optimize(catch=...): a failed trial, go on
            record_failure(trial, exc)
            study.tell(trial, state=TrialState.FAIL)
            continue
        except Exception as exc:
            if machine_fault(exc) is not None:  # disk full, out of memory: re-queued, not counted
                requeue(study, trial)
            with contextlib.suppress(Exception):
                study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value)


@dataclass(frozen=True)
class Job:
    """What a worker process gets (pickled once, as it starts): the settings, every study's task (by symbol)
    and its share of cores."""

    settings: StudySettings
    tasks: dict[str, SymbolTask]
    threads: int


_JOB: Job | None = None  # per worker process: set as it starts (`start_worker`)


def start_worker(parent: int, job: Job) -> None:
    """Each worker's initializer: die with the parent, and keep the job for every study it works on."""
    global _JOB
    die_with(parent)
    _JOB = job


def work(symbol: str, backend: str, worker: int) -> str | None:
    """One worker process on one study; returns why it had to skip the study (a backend that cannot load)."""
    assert _JOB is not None, "work runs in a worker started by ParallelEngine"
    task = _JOB.tasks[symbol]
    try:
        task.forecaster.model(backend)  # load it now, then fit the threads to this process's share
        set_threads(_JOB.threads)
        drain(open_study(_JOB.settings, symbol, backend, worker), task, backend, _JOB.settings)
    except SweepError as exc:  # the parent raises it: the sweep skips this backend and says why
        return str(exc)
    return None


class ParallelEngine(Engine):
    """`jobs` worker processes, started on entry; `run` has them all drain one study."""

    def __init__(self, settings: StudySettings, tasks: list[SymbolTask], jobs: int) -> None:
        super().__init__(settings)
        self.job = Job(settings, {t.series.symbol: t for t in tasks}, threads=max(1, (os.cpu_count() or 1) // jobs))
        self.jobs = jobs
        self.pool: cf.ProcessPoolExecutor | None = None

    def __enter__(self) -> Self:
        ctx = multiprocessing.get_context("spawn")  # no forked database connections or torch threads
        self.pool = cf.ProcessPoolExecutor(
            self.jobs, mp_context=ctx, initializer=start_worker, initargs=(os.getpid(), self.job)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def run(self, task: SymbolTask, backend: str, on_trial: OnTrial | None = None) -> optuna.Study:
        assert self.pool is not None, "ParallelEngine runs studies inside its with block"
        s, symbol = self.settings, task.series.symbol
        # the parent alone recovers dead trials and queues defaults, before any worker starts on the study
        with study_lock(s.storage, study_name(symbol, backend, s.namespace)):  # no half-claimed trial
            study = prepare_study(task, backend, s)
        futures = [self.pool.submit(work, symbol, backend, i) for i in range(self.jobs)]
        try:
            while cf.wait(futures, timeout=POLL_S).not_done:
                if on_trial:
                    on_trial(study)
        except BaseException:  # Ctrl-C, SIGTERM or a fault here: stop the workers now, not after their
            for child in multiprocessing.active_children():  # study (their trials re-queue on resume)
                child.kill()
            raise
        for f in futures:
            if (why := f.result()) is not None:
                raise SweepError(why)
        return study
