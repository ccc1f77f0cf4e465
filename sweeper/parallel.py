"""Several Optuna worker processes on the same studies: `sweep run --jobs N`.

Every worker opens the same storage and works through the same (symbol, backend) studies, one after the
other, so each loads a model once and the studies fill up N trials at a time. A worker claims a trial
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
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from sweeper.atomic import locked
from sweeper.errors import SweepError, machine_fault
from sweeper.objective import SymbolTask, objective
from sweeper.search import (
    CAUGHT,
    ERROR,
    FINISHED,
    INTERRUPTED,
    OWNER,
    StudySettings,
    finished,
    open_study,
    optuna_report,
    owner_id,
    prepare_study,
    requeue,
    storage_for,
    study_label,
    study_name,
)

POLL_S = 0.5  # how often the parent reads the studies to draw progress


def set_threads(n: int) -> None:
    """Give this process `n` compute threads, so parallel workers share the cores instead of fighting
    over them. Only touches torch when a backend already imported it."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


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
    else:
        raise SweepError(f"--jobs needs a sqlite:// or postgresql:// storage, got {url.split(':')[0]}")


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
            trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}")
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
    """What a worker process gets (pickled once): the studies to work through and its share of cores."""

    settings: StudySettings
    tasks: list[SymbolTask]
    backends: list[str]
    threads: int


def work(job: Job, worker: int) -> dict[str, str]:
    """One worker process: every study in turn. Returns the studies it had to skip, with why."""
    set_threads(job.threads)
    s = job.settings
    errors: dict[str, str] = {}
    for task in job.tasks:
        for backend in job.backends:
            try:
                task.forecaster.model(backend)  # load it now, then fit the threads to this process's share
                set_threads(job.threads)
                study = open_study(
                    s.storage, task.series.symbol, backend, s.objectives, s.seed, s.namespace, worker, s.prunes
                )
                drain(study, task, backend, s)
            except SweepError as exc:  # a backend that cannot load: the parent skips it and says why
                errors[study_label(task.series.symbol, backend)] = str(exc)
    return errors


class ParallelEngine:
    """Runs every study with `jobs` processes on entry; `run` then hands each finished study to selection."""

    def __init__(
        self,
        settings: StudySettings,
        tasks: list[SymbolTask],
        backends: list[str],
        jobs: int,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.job = Job(settings, tasks, backends, threads=max(1, (os.cpu_count() or 1) // jobs))
        self.jobs = jobs
        self.progress = progress
        self.errors: dict[str, str] = {}

    def __enter__(self) -> ParallelEngine:
        s = self.settings
        # the parent alone recovers dead trials and queues defaults, before any worker starts
        studies = {}
        for task in self.job.tasks:
            for b in self.job.backends:
                with study_lock(s.storage, study_name(task.series.symbol, b, s.namespace)):  # no half-claimed trial
                    studies[study_label(task.series.symbol, b)] = prepare_study(task, b, s)
        ctx = multiprocessing.get_context("spawn")  # no forked database connections or torch threads
        with cf.ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=die_with, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(work, self.job, i) for i in range(self.jobs)]
            try:
                while cf.wait(futures, timeout=POLL_S).not_done:
                    self._draw(studies)
            except BaseException:  # Ctrl-C, SIGTERM or a fault here: stop the workers now, not after their
                for child in multiprocessing.active_children():  # studies (their trials re-queue on resume)
                    child.kill()
                raise
            for f in futures:
                for label, why in f.result().items():
                    self.errors.setdefault(label, why)
        self._draw(studies)
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _draw(self, studies: dict[str, optuna.Study]) -> None:
        if self.progress:
            for label, study in studies.items():
                self.progress(label, finished(study), self.settings.budget.trials)

    def run(
        self, task: SymbolTask, backend: str, on_trial: Callable[[optuna.Study], None] | None = None
    ) -> optuna.Study:
        label = study_label(task.series.symbol, backend)
        if label in self.errors:
            raise SweepError(self.errors[label])
        s = self.settings
        return open_study(s.storage, task.series.symbol, backend, s.objectives, s.seed, s.namespace)
