"""One sweep, start to end: lake -> plan -> forecasts (cached) -> scores -> search -> selection -> files.

`prepare` checks every input and reads the data without writing anything, so bad input leaves no
files. `execute` then searches, selects and writes; it can be killed at any point and resumed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from sweeper.atomic import check_writable, clean_temporaries, write_json
from sweeper.backends import BASELINE, check_backend
from sweeper.cache import ForecastCache
from sweeper.data import Series, lake_label, load, resolve_lake
from sweeper.engines import SCHEDULERS, engine_for
from sweeper.errors import SweepError
from sweeper.finetune.fit import FinetuneStore
from sweeper.finetune.tuner import Tuner
from sweeper.forecast import Forecaster
from sweeper.metric import get as metric_named
from sweeper.objective import SymbolTask
from sweeper.plan import Protocol, make_plan
from sweeper.search import (
    Budget,
    StudyOutcome,
    StudySettings,
    check_storage,
    finished,
    namespace_for,
    outcome,
    owner_id,
    study_label,
)
from sweeper.select import BEATS_NAIVE, SymbolResult, check_rule, select
from sweeper.space import Space, load_space
from sweeper.store import config_record, origins_frame, trials_frame, write_parquet
from sweeper.workspace import RunPaths

DEFAULT_BACKENDS = ("naive", "drift", "seasonal_naive")


@dataclass
class RunRequest:
    """What the user asked for; stored in the manifest so `--resume` can repeat it exactly."""

    symbols: list[str]
    lake: str | None = None
    freq: str | None = None
    backends: list[str] = field(default_factory=lambda: list(DEFAULT_BACKENDS))
    trials: int = 50
    timeout: float | None = None
    metric: str = "crps"
    select: str = BEATS_NAIVE  # or "best": the selection rule (sweeper/select.py)
    horizon: int = 1
    val_origins: int | None = None
    test_origins: int | None = None
    stride: int = 1
    season: int | None = None  # of the MASE/MSIS scale (default: metrics.default_season)
    seed: int = 0
    spaces_dir: str | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    storage: str | None = None
    objectives: list[str] | None = None  # several: a Pareto search (NSGA-II); selection still uses `metric`
    latency_budget: float | None = None  # seconds per origin; selection keeps only configs within it
    engine: str = "optuna"  # or "ray": Ray Tune with OptunaSearch and ASHA (sweeper/engines/ray_tune.py)
    jobs: int = 1  # optuna engine: processes on this machine sharing every study (sweeper/engines/parallel.py)
    workers: int | None = None  # ray engine: trials at once (default: every CPU of the Ray cluster)
    ray_address: str | None = None  # ray engine: "auto" or HOST:PORT of a running cluster; None starts one here
    gpus_per_trial: float = 0.0  # ray engine
    scheduler: str | None = None  # ray engine: asha (the default: early stopping) or fifo (every trial runs out)
    finetune_on: list[str] = field(default_factory=list)  # more symbols (same freq) fine-tuning trains on too
    prune: bool = True  # multi-fidelity: stop trials behind after a chunk of validation origins (--no-prune)

    def search_objectives(self) -> tuple[str, ...]:
        return tuple(self.objectives or (self.metric,))


@dataclass
class Prepared:
    request: RunRequest
    lake: Path
    tasks: list[SymbolTask]


def prepare(req: RunRequest, cache: ForecastCache | None = None) -> Prepared:
    """Validate the request and build every symbol's plan; writes nothing."""
    if not req.symbols:
        raise SweepError("no symbols given: use --symbols SYMBOL [SYMBOL ...]")
    if len(set(req.symbols)) != len(req.symbols):
        raise SweepError(f"duplicate symbols in --symbols: {' '.join(req.symbols)}")
    if req.trials < 1:
        raise SweepError(f"--trials must be >= 1, got {req.trials}")
    if req.timeout is not None and req.timeout <= 0:
        raise SweepError(f"--timeout must be > 0 seconds, got {req.timeout}")
    for m in (req.metric, *req.search_objectives()):
        metric_named(m)
    check_rule(req.select)
    if req.season is not None and req.season < 1:
        raise SweepError(f"--season must be >= 1, got {req.season}")
    if req.objectives and req.metric != req.objectives[0]:
        raise SweepError(f"--metric {req.metric} must be the first of --objectives ({' '.join(req.objectives)})")
    if req.latency_budget is not None and req.latency_budget <= 0:
        raise SweepError(f"--latency-budget must be > 0 seconds, got {req.latency_budget}")
    _check_engine(req)
    for b in req.backends:
        check_backend(b)
    for b in req.checkpoints:
        if b not in req.backends:
            raise SweepError(f"--checkpoint names backend {b!r}, which is not in --backends")
    spaces_dir = Path(req.spaces_dir) if req.spaces_dir else None
    spaces = {b: load_space(b, spaces_dir) for b in {*req.backends, BASELINE}}
    lake = resolve_lake(req.lake)
    series: list[Series] = load(lake, req.symbols, req.freq)
    max_context = max(s.max_context for s in spaces.values())
    protocol = Protocol(req.horizon, max_context, req.val_origins, req.test_origins, req.stride, req.season)
    checkpoints = {b: req.checkpoints.get(b) or spaces[b].checkpoint for b in req.backends}
    cache = cache or ForecastCache(None)
    extra = load(lake, [s for s in req.finetune_on if s not in req.symbols], series[0].freq) if req.finetune_on else []
    forecaster = Forecaster(
        cache,
        seed=req.seed,
        device=req.device,
        checkpoints={b: c for b, c in checkpoints.items() if c},
        tuner=Tuner(FinetuneStore.beside(cache.root), req.seed, req.device, extra),
    )
    longest = max(spaces.values(), key=lambda sp: sp.max_context)
    try:
        tasks = [SymbolTask(s, make_plan(s, protocol), spaces, forecaster) for s in series]
    except SweepError as exc:
        raise SweepError(
            f"{exc}; the longest context_length ({max_context}) comes from {longest.path}: "
            "drop larger choices there (or in a copy passed with --spaces DIR), or ask for fewer origins"
        ) from None
    _check_draws(tasks, spaces, req.backends)
    for b in req.checkpoints:  # named by the user: it must load now, never be skipped later
        forecaster.model(b)
    return Prepared(req, lake, tasks)


MAX_DRAW_BYTES = 2 << 30  # one cache entry: origins x draws x horizon float32 values


def _check_draws(tasks: list[SymbolTask], spaces: dict[str, Space], backends: list[str]) -> None:
    """Refuse a space whose largest sample count would not fit in memory for one split's origins."""
    for task in tasks:
        origins = max(task.plan.origins(split).size for split in ("val", "test"))
        for b in backends:
            size = origins * spaces[b].max_samples * task.plan.protocol.horizon * 4
            if size > MAX_DRAW_BYTES:
                raise SweepError(
                    f"search space {spaces[b].path}: {spaces[b].max_samples} draws x {origins} origins x horizon "
                    f"{task.plan.protocol.horizon} of {task.series.symbol} need {size / 2**30:.1f} GiB, more than "
                    f"{MAX_DRAW_BYTES / 2**30:.0f} GiB: lower num_samples' high or ask for fewer origins"
                )


def _check_engine(req: RunRequest) -> None:
    if req.engine not in ("optuna", "ray"):
        raise SweepError(f"unknown --engine {req.engine!r}: use optuna or ray")
    if req.jobs < 1:
        raise SweepError(f"--jobs must be >= 1, got {req.jobs}")
    if req.engine == "ray":
        if req.jobs > 1:
            raise SweepError("--jobs runs Optuna processes; with --engine ray use --workers")
        if len(req.search_objectives()) > 1:
            raise SweepError("a Pareto search (several --objectives) runs on --engine optuna")
        if req.workers is not None and req.workers < 1:
            raise SweepError(f"--workers must be >= 1, got {req.workers}")
        if req.gpus_per_trial < 0:
            raise SweepError(f"--gpus-per-trial must be >= 0, got {req.gpus_per_trial}")
        if req.scheduler not in (None, *SCHEDULERS):
            raise SweepError(f"unknown --scheduler {req.scheduler!r}: use {' or '.join(SCHEDULERS)}")
    elif req.workers is not None or req.ray_address or req.gpus_per_trial or req.scheduler:
        raise SweepError("--workers, --ray-address, --gpus-per-trial and --scheduler need --engine ray")


Progress = Callable[[str, int, int], None]  # (study label, finished trials, budget)


def study_settings(prep: Prepared, paths: RunPaths) -> StudySettings:
    """What every study of the run shares; a shared --storage names them after the run so runs stay apart."""
    req = prep.request
    return StudySettings(
        paths.storage_url(req.storage),
        req.search_objectives(),
        Budget(req.trials, req.timeout),
        req.seed,
        namespace_for(paths.run_id, req.storage),
        {"run": paths.run_id, "metric": req.metric, "lake": lake_label(prep.lake)},
        # a latency budget selects among all trials within it: pruning on accuracy alone could drop the best of them
        prune=req.prune and req.latency_budget is None,
    )


def execute(prep: Prepared, paths: RunPaths, progress: Progress | None = None) -> list[SymbolResult]:
    """Search every (symbol, backend), select per symbol, write configs and tables."""
    req = prep.request
    results, trial_frames, origin_frames = [], [], []
    with engine_for(req, study_settings(prep, paths), prep.tasks, paths.ray) as engine:
        for task in prep.tasks:
            outcomes: dict[str, StudyOutcome] = {}
            for backend in req.backends:
                label = study_label(task.series.symbol, backend)

                def tick(study: Any, label: str = label) -> None:
                    if progress:
                        progress(label, finished(study), req.trials)

                try:
                    study = engine.run(task, backend, on_trial=tick)
                except SweepError as exc:  # a backend that cannot load (no weights): skip it, say so
                    outcomes[backend] = StudyOutcome(error=str(exc))
                    continue
                tick(study)
                outcomes[backend] = outcome(study, task.spaces[backend], req.metric, req.latency_budget)
                trial_frames.append(trials_frame(task.series.symbol, backend, study, task.spaces[backend]))
            result = select(task, outcomes, req.metric, req.seed, req.select)
            results.append(result)
            origin_frames.append(origins_frame(task, result))
            search = {"objectives": list(req.search_objectives()), "latency_budget_s": req.latency_budget}
            fronts = {b: o.front for b, o in outcomes.items() if o.front is not None}
            record = config_record(paths.run_id, task, result, req, lake_label(prep.lake), search, fronts)
            record.to_json(paths.config(task.series.symbol))
    if trial_frames:
        write_parquet(paths.trials, pl.concat(trial_frames, how="diagonal_relaxed"))
    write_parquet(paths.origins, pl.concat(origin_frames, how="diagonal_relaxed"))
    return results


def _now() -> str:
    """UTC time to the microsecond: `sweep runs` orders runs by it, and two runs can start within a second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def run(req: RunRequest, paths: RunPaths, progress: Progress | None = None, resume: bool = False) -> list[SymbolResult]:
    """Check everything, then record the request, search, select, write; `resume` continues a run folder."""
    prep = prepare(req, ForecastCache(paths.cache))
    for folder in (paths.results, paths.hyperparams):
        check_writable(folder, "--out")
    check_storage(req.storage)
    with paths.locked():
        # a folder without a manifest is a run killed before it began: its id may be used again
        if not resume and paths.manifest.exists():
            raise SweepError(
                f"run {paths.run_id} already exists in {paths.results.parent}; use --resume {paths.run_id}"
            )
        if not (req.storage or "").startswith("postgresql"):  # else other machines may be writing here
            for folder in (paths.results, paths.hyperparams):
                clean_temporaries(folder)  # under the lock: only a killed writer's files are left here
        running = {"status": "running", "owner": owner_id(), "request": asdict(req)}  # `sweep cache clean` asks it
        manifest = {"run_id": paths.run_id, "created": _now(), **running}
        if resume:
            manifest = {**paths.load_manifest(), **running, "resumed": _now()}
        write_json(paths.manifest, manifest)
        results = execute(prep, paths, progress)
        configs = {r.symbol: str(paths.config(r.symbol)) for r in results}
        write_json(paths.manifest, {**manifest, "status": "complete", "finished": _now(), "configs": configs})
    return results


def resume_request(paths: RunPaths, trials: int | None = None, timeout: float | None = None) -> RunRequest:
    """The recorded request of a run; only the budget may change on resume."""
    req = RunRequest(**paths.load_manifest()["request"])
    return replace(req, trials=trials or req.trials, timeout=timeout or req.timeout)
