"""The Ray Tune engine: `sweep run --engine ray [--ray-address auto|HOST:PORT] [--workers N] [--gpus-per-trial G]`.

Same studies, objective and files as the Optuna engine. Tune's searcher is OptunaSearch over the run's own
Optuna storage and study (seeded TPE, the defaults as trial 0, trials of dead processes recovered and
queued again), so trials.parquet, the configs and the selection step are shared with the Optuna engine.
Tune adds trials on several processes or machines, and ASHA early stopping.

Chunks: a trial forecasts and scores the validation origins chunk by chunk (`SymbolTask.rungs`: the
forecast cache keeps each chunk on its own) and reports the running mean of the metric after each. ASHA
stops a trial whose running mean is behind at a rung before it forecasts the next chunk, so a stopped
trial pays only for the origins it saw; it is recorded as PRUNED with its last running mean. A trial that
reports every chunk is COMPLETE with exactly the Optuna engine's objective value and validation means.
With `--no-prune` there is no scheduler and every trial runs to the end.

Workers: actors are reused (reuse_actors=True) and each worker process keeps its task, forecaster and
loaded model at module level, so a model loads once per worker, not once per trial; each trial gets its
share of the CPUs as torch threads. Tune's own files go to results/<run_id>/ray/.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/JSON/TensorBoard files
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: nothing on stdout (it may carry --json)

import optuna
import ray
from ray import tune
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from sweeper.cache import ForecastCache
from sweeper.data import Series
from sweeper.engines.base import Engine, OnTrial, set_threads
from sweeper.errors import SweepError
from sweeper.finetune.settings import FinetuneSettings
from sweeper.forecast import Forecaster
from sweeper.metric import get
from sweeper.objective import (
    Candidate,
    Report,
    SymbolTask,
    mean_scores,
    record_aggregation,
    record_means,
    rung_reporter,
)
from sweeper.plan import Plan
from sweeper.search import CAUGHT, StudySettings, finished, prepare_study, storage_for
from sweeper.space import AGGREGATION, Space

SCORE = "running_mean"  # reported after each chunk: mean of the metric over the origins so far
CHUNK = "chunk"
MEAN = "mean_"  # prefix of the validation means in a trial's last report
FAILED = "failed"  # reported instead of scores when they cannot be computed (search.CAUGHT, as in Optuna)


@dataclass(frozen=True)
class RayOptions:
    workers: int | None  # trials at once; None: one per CPU of the cluster
    address: str | None  # None: start a local Ray
    gpus_per_trial: float
    storage_path: Path  # Tune's experiment folders (results/<run_id>/ray)
    scheduler: str = "asha"  # or "fifo": no early stopping, every trial scores all its chunks

    def stops(self, prune: bool) -> bool:
        """Whether a scheduler may stop trials early: ASHA, unless fifo or --no-prune."""
        return prune and self.scheduler != "fifo"

    def trial_scheduler(self, mode: str, chunks: int, prune: bool = True) -> TrialScheduler:
        """ASHA over the chunks of validation origins; FIFO (every trial runs out) for fifo or --no-prune."""
        if not self.stops(prune):
            return FIFOScheduler()
        return ASHAScheduler(metric=SCORE, mode=mode, max_t=chunks, grace_period=1, reduction_factor=2)


@dataclass(frozen=True)
class TrialSpec:
    """What a worker needs for one study, sent once through the object store: the data, plan and spaces,
    and how to build a forecaster (not the driver's own, which may hold loaded models and cached draws)."""

    key: str
    series: Series
    plan: Plan
    spaces: dict[str, Space]
    backend: str
    metric: str
    cache_root: str | None
    memory_bytes: int
    seed: int
    device: str
    checkpoints: tuple[tuple[str, str], ...]
    threads: int
    stops: bool = True  # a scheduler may stop trials: fine-tuning trials then report at their training rungs


@functools.cache
def _forecaster(
    cache_root: str | None, memory_bytes: int, seed: int, device: str, checkpoints: tuple[tuple[str, str], ...]
) -> Forecaster:
    """One forecaster per worker process: its models and in-memory cache outlive single trials."""
    cache = ForecastCache(Path(cache_root) if cache_root else None, memory_bytes)
    return Forecaster(cache, seed=seed, device=device, checkpoints=dict(checkpoints))


_TASKS: dict[str, SymbolTask] = {}  # per worker process: the task of the study it works on


def _task(spec: TrialSpec) -> SymbolTask:
    if spec.key not in _TASKS:
        _TASKS.clear()
        fc = _forecaster(spec.cache_root, spec.memory_bytes, spec.seed, spec.device, spec.checkpoints)
        fc.model(spec.backend)  # load it now, then fit the threads to this trial's CPUs
        set_threads(spec.threads)
        _TASKS[spec.key] = SymbolTask(spec.series, spec.plan, spec.spaces, fc)
    return _TASKS[spec.key]


def trainable(config: dict[str, Any], spec: TrialSpec) -> None:
    """One Tune trial: forecast and score the knobs chunk by chunk of validation origins, reporting the
    running mean after each; Tune ends the function at a report when ASHA stops the trial. A fine-tuning
    trial reports at its training rungs instead (`training_report`), before it trains on."""
    task = _task(spec)
    last = len(task.chunks("val"))
    space = spec.spaces[spec.backend]
    cand = Candidate(spec.backend, space.values(config))
    steps = FinetuneSettings.from_knobs(cand.params).steps
    report = training_report(last, steps, space.aggregations[0]) if spec.stops else None
    on_rung = rung_reporter(task, cand, (spec.metric,), report)
    rungs = task.rungs(cand, space.aggregations, spec.metric, on_rung=on_rung)
    try:
        for i, (aggregation, scores) in enumerate(rungs, 1):
            if on_rung is not None and i < last:
                continue  # judged at its training rungs, each on every validation origin
            means = {f"{MEAN}{k}": v for k, v in mean_scores(scores).items()} if i == last else {}
            tune.report(
                {SCORE: get(spec.metric).aggregate(scores[spec.metric]), CHUNK: i, AGGREGATION: aggregation, **means}
            )
    except optuna.TrialPruned:
        return  # Tune stopped it at a training rung; that report was its last
    except CAUGHT as exc:
        tune.report({SCORE: math.nan, FAILED: str(exc)})


def training_report(last: int, steps: int, aggregation: str) -> Report:
    """ASHA's milestones for a fine-tuning trial: the training rungs before the end (25% and 50% of
    `ft_steps`, `FinetuneSettings.rungs`) report as chunks 1, 2, ... of the `last` (each the mean over every
    validation origin with the weights trained so far), the end as the last chunk, with its means. So
    ASHA compares a rung's trials at the same milestone and stops a bad learning rate before it trains on.
    A rung that would reach the last chunk is not reported (only a complete trial reports that one)."""
    seen = 0

    def report(step: int, value: float) -> bool:
        nonlocal seen
        seen += 1
        if step >= steps or seen >= last:
            return False
        try:
            tune.report({SCORE: value, CHUNK: seen, AGGREGATION: aggregation})
        except SystemExit:  # how Tune ends a function trial it stopped (train session: sys.exit in report)
            return True  # tests/test_ray.py pins it: the stopped trial trains no further
        return False

    return report


class Searcher(OptunaSearch):
    """OptunaSearch that records trials as the Optuna engine does: validation means on a complete trial,
    PRUNED for one that ASHA stopped before its last chunk, FAIL for one that could not be scored."""

    def __init__(self, chunks: int, space: Space, **kwargs: Any) -> None:
        super().__init__(space=space.distributions(), **kwargs)
        self.chunks = chunks
        self.knobs = space
        self.told: set[str] = set()  # Tune trials whose Optuna trial is finished

    def asked(self, trial_id: str) -> optuna.Trial | None:
        """The Optuna trial OptunaSearch asked for a Tune trial. OptunaSearch keeps that map private
        (`_ot_trials`) and has no public accessor; tests/test_ray.py pins it
        (`test_optuna_search_keeps_the_optuna_trial_of_each_tune_trial_in_ot_trials`)."""
        return self._ot_trials.get(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot = self.asked(trial_id)
        if ot is None or not result or error or trial_id in self.told:
            return super().on_trial_complete(trial_id, result, error)
        self.told.add(trial_id)
        if FAILED in result:
            return super().on_trial_complete(trial_id, None, error=True)  # FAIL
        record_aggregation(ot, self.knobs, result[AGGREGATION])  # the trial's pick, as in the Optuna engine
        if result.get(CHUNK) == self.chunks:
            record_means(ot, {k[len(MEAN) :]: v for k, v in result.items() if k.startswith(MEAN)})
            return super().on_trial_complete(trial_id, result, error)
        # Tune hands the report that made ASHA stop the trial here, not to on_trial_result
        super().on_trial_result(trial_id, {SCORE: result[SCORE], TRAINING_ITERATION: result[CHUNK]})
        return super().on_trial_complete(trial_id, None)  # PRUNED, valued at its last running mean


class Ticks(tune.Callback):
    """Draws progress after each trial. Tune pickles its callbacks with the experiment state; drawing is
    not state (and holds locks), so it is left out of the pickle."""

    def __init__(self, tick: Callable[[], None]) -> None:
        self.tick: Callable[[], None] | None = tick

    def __getstate__(self) -> dict:
        return {"tick": None}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.tick:
            self.tick()


class RayEngine(Engine):
    """Starts (or joins) Ray on entry and shuts a Ray it started down on exit; `run` tunes one study."""

    def __init__(self, settings: StudySettings, opts: RayOptions) -> None:
        super().__init__(settings)
        self.opts = opts
        self.started = False
        self.workers = 1
        self.cpus_per_trial = 1

    def __enter__(self) -> Self:
        logging.getLogger("ray.tune").setLevel(logging.ERROR)  # it warns about the logger files we turned off
        if not ray.is_initialized():
            if self.opts.address:
                ray.init(address=self.opts.address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                # a local cluster turns token auth on by itself and says so on every start; keep it on, quietly
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                cpus = max(os.cpu_count() or 1, self.opts.workers or 0)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            self.started = True
        total = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.workers = self.opts.workers or total
        self.cpus_per_trial = max(1, total // self.workers)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            ray.shutdown()

    def _spec(self, task: SymbolTask, backend: str, key: str) -> TrialSpec:
        fc = task.forecaster
        return TrialSpec(
            key=key,
            series=task.series,
            plan=task.plan,
            spaces={backend: task.spaces[backend]},
            backend=backend,
            metric=self.settings.objectives[0],
            cache_root=str(fc.cache.root.resolve()) if fc.cache.root else None,
            memory_bytes=fc.cache.memory_bytes,
            seed=fc.seed,
            device="cuda" if self.opts.gpus_per_trial > 0 else fc.device,
            checkpoints=tuple(sorted(fc.checkpoints.items())),
            threads=self.cpus_per_trial,
            stops=self.opts.stops(self.settings.prune),
        )

    def run(self, task: SymbolTask, backend: str, on_trial: OnTrial | None = None) -> optuna.Study:
        """Tune the trials still missing from the study's budget."""
        s = self.settings
        study = prepare_study(task, backend, s)
        remaining = s.budget.trials - finished(study)
        if remaining <= 0:
            return study
        mode = "min" if get(s.objectives[0]).direction == "minimize" else "max"
        chunks = len(task.chunks("val"))
        searcher = Searcher(
            chunks,
            task.spaces[backend],
            metric=SCORE,
            mode=mode,
            sampler=study.sampler,  # the study's seeded TPE
            study_name=study.study_name,
            storage=storage_for(s.storage),
        )
        spec = self._spec(task, backend, key=f"{study.study_name}@{id(self)}")
        resources = {"cpu": self.cpus_per_trial, "gpu": self.opts.gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trainable, spec=spec), resources),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=self.opts.trial_scheduler(mode, chunks, s.prune),
                num_samples=remaining,
                max_concurrent_trials=self.workers,
                reuse_actors=True,
                time_budget_s=s.budget.timeout,
                trial_dirname_creator=lambda trial: trial.trial_id,  # short folder names under results/.../ray
            ),
            run_config=tune.RunConfig(
                storage_path=str(self.opts.storage_path.resolve()),
                name=study.study_name.replace(":", "_"),
                verbose=0,
                callbacks=[Ticks(lambda: on_trial(study))] if on_trial else [],
                failure_config=tune.FailureConfig(fail_fast=True),
            ),
        )
        grid = tuner.fit()
        if grid.errors:
            raise _cause(grid.errors[0])
        return study


def _cause(err: BaseException) -> BaseException:
    """A worker's SweepError (a model that cannot load) as a SweepError, so the sweep skips that backend."""
    cause = getattr(err, "cause", None) or err.__cause__ or err
    return SweepError(str(cause)) if isinstance(cause, SweepError) else cause
