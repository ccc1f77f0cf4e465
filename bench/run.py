"""`make bench`: measured numbers for the README, side by side in one run. Not a test: nothing here asserts.

1. Baseline sweep: the baselines over two hourly symbols, 500 validation origins each, end to end.
2. Against the naive loop of the closest existing tool (per trial: load the model, forecast each origin on
   its own with the trial's sample count, aggregate, score), same backend, data, origins, search space and
   trial count: trials per minute of each and their ratio; and this sweep's wall time against its floor,
   the sum of the distinct cache-miss forward passes its trials needed (each timed when it ran). For the
   `naive` baseline and, when registered, Toto with a random tiny checkpoint.
3. Scaling: wall time as origins, symbols and trials double; one against two Optuna processes (--jobs)
   and one against two Ray workers on this machine's cores.
4. Memory: resident memory of one 1,000-trial sweep after 250, 500 and 1,000 trials.
5. Backends: per model backend, forecasts per second and peak memory for the tiny preset (bench/backends.py).
6. Fine-tuning: steps per second and peak memory per backend, tiny and small shapes (bench/finetune.py).
7. Published shapes: per model backend at the small preset, the naive loop against `sweep run`
   (bench/published.py, also `make bench-published`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import optuna
import orjson

from bench.backends import LIBRARIES, print_table
from bench.finetune import print_table as finetune_table
from sweeper import metrics
from sweeper.aggregate import aggregate
from sweeper.backends import REGISTRY, backend_class
from sweeper.forecast import config_fields, origin_seeds
from sweeper.metric import get
from sweeper.objective import SymbolTask
from sweeper.plan import contexts
from sweeper.search import storage_for
from sweeper.sweep import RunRequest, prepare, run
from sweeper.workspace import RunPaths

SHARED_LAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv"
LAKE = os.environ.get("SWEEP_BENCH_LAKE", str(SHARED_LAKE))
NAIVE_LOOP_BUDGET_S = 60.0  # the naive loop stops after this long; its rate comes from the trials it did
MODEL = "toto"  # the tiny-preset model backend measured when it is registered


@dataclass(frozen=True)
class Sweep:
    """One timed `sweep run`: wall time end to end, and its floor (the model time of its cache misses);
    `history`: (seconds since the start, value) of each complete trial, in the order they finished."""

    label: str
    trials: int
    wall_s: float
    floor_s: float
    misses: int
    history: list[tuple[float, float]]
    pruned: int = 0

    @property
    def per_min(self) -> float:
        return 60 * self.trials / self.wall_s


def timed_sweep(label: str, req: RunRequest) -> Sweep:
    """Run a sweep in a temp folder; the floor sums the forward time recorded with each cache entry (every
    extension of an entry adds its own), so partial passes of pruned trials count for what they cost."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = RunPaths(Path(tmp), "bench")
        began = time.time()
        start = time.perf_counter()
        run(req, paths)
        wall = time.perf_counter() - start
        entries = [orjson.loads(p.read_bytes()) for p in paths.cache.glob("*.json")]
        history, pruned, finished = [], 0, 0
        for symbol in req.symbols:
            for backend in req.backends:
                study = optuna.load_study(
                    study_name=f"{symbol}--{backend}", storage=storage_for(paths.storage_url(req.storage))
                )
                for t in study.get_trials(deepcopy=False):
                    finished += t.state.name in ("COMPLETE", "PRUNED")
                    pruned += t.state.name == "PRUNED"
                    if t.state.name == "COMPLETE" and t.datetime_complete is not None:
                        history.append((t.datetime_complete.timestamp() - began, float(t.value)))
    floor = sum(e["seconds_per_origin"] * e["shape"][0] for e in entries)
    return Sweep(label, finished, wall, floor, len(entries), sorted(history), pruned)


@dataclass(frozen=True)
class Loop:
    trials: float  # finished trials, plus the share of origins done in one cut short by the budget
    wall_s: float
    history: list[tuple[float, float]]  # (seconds since the start, value) of each finished trial

    @property
    def per_min(self) -> float:
        return 60 * self.trials / self.wall_s


def naive_loop(
    task: SymbolTask,
    backend: str,
    checkpoint: str | None,
    trials: int,
    metric: str,
    seed: int,
    budget_s: float = NAIVE_LOOP_BUDGET_S,
) -> Loop:
    """The closest existing tool's loop, with the same seeded TPE over the same space and origins: per trial
    load the model, forecast each validation origin on its own, aggregate, score; stops after `budget_s`.
    Each origin is seeded as the sweep seeds it, so a configuration scores the same on both sides (up to
    float rounding of other batch sizes) and time-to-quality compares searches, not the luck of the draws."""
    space = task.spaces[backend]
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), direction=get(metric).direction)
    if space.defaults() is not None:
        study.enqueue_trial(space.optuna_params(space.defaults()))
    origins, horizon, truth = task.plan.origins("val"), task.plan.protocol.horizon, task.truth("val")
    start = time.perf_counter()
    history: list[tuple[float, float]] = []

    def over() -> bool:
        return time.perf_counter() - start >= budget_s

    while len(history) < trials and not over():
        trial = study.ask()
        params = {name: p.suggest(trial) for name, p in space.params.items()}  # aggregation too
        model = backend_class(backend)(checkpoint=checkpoint, device="cpu")
        knobs = type(model).model_knobs(params)
        n, ctx = int(params["num_samples"]), int(params["context_length"])
        parts = []
        for o in origins:
            one = contexts(task.series, np.array([o]), ctx)
            seeds = origin_seeds(config_fields(model, params), seed, one.ts[:, -1])  # the sweep's draws
            parts.append(model.forecast(one, horizon, n, knobs, seeds))
            if over() and len(parts) < len(origins):  # cut short: count the share of the trial done
                return Loop(len(history) + len(parts) / len(origins), time.perf_counter() - start, history)
        samples = np.concatenate(parts).astype(np.float64)
        point = aggregate(samples, str(params["aggregation"]))
        value = float(np.nanmean(metrics.score(samples, point, truth, np.zeros(len(origins)))[metric]))
        study.tell(trial, value)
        history.append((time.perf_counter() - start, value))
    return Loop(len(history), time.perf_counter() - start, history)


def against_naive_loop(req: RunRequest) -> None:
    backend = req.backends[0]
    checkpoint = req.checkpoints.get(backend)
    prepare(req).tasks[0].forecaster.model(backend)  # import the backend once, for neither side to pay
    loop = naive_loop(prepare(req).tasks[0], backend, checkpoint, req.trials, req.metric, req.seed)
    print(
        f"{backend:<8} {req.symbols[0]} 1h, {req.val_origins} val origins, {req.trials} trials | "
        f"naive loop {loop.per_min:9.1f} trials/min ({loop.trials} trials in {loop.wall_s:.1f} s)"
    )
    for storage in (None, "sqlite"):  # the default journal file, and a SQLite file
        ours = timed_sweep(backend, replace(req, storage=storage))
        print(
            f"    sweep, storage {storage or 'journal':<8} {ours.per_min:9.1f} trials/min ({ours.wall_s:.1f} s) | "
            f"ratio {ours.per_min / loop.per_min:7.1f}x | floor {ours.floor_s:.2f} s ({ours.misses} distinct "
            f"passes), wall/floor {ours.wall_s / ours.floor_s:.1f}x"
        )


def model_request(base: RunRequest, ckpt: Path) -> RunRequest | None:
    """The tiny-preset model backend, when it is registered and importable."""
    if MODEL not in REGISTRY:
        print(f"{MODEL}: not registered in sweeper.backends.REGISTRY; skipped")
        return None
    try:
        backend_class(MODEL).init_checkpoint("tiny", ckpt)
    except ImportError as exc:
        print(f"{MODEL}: cannot import ({exc}); skipped")
        return None
    return replace(base, backends=[MODEL], checkpoints={MODEL: str(ckpt)}, device="cpu")


def scaling(base: RunRequest) -> None:
    rows = [
        ("base", base),
        ("origins x2", replace(base, val_origins=2 * (base.val_origins or 0))),
        ("symbols x2", replace(base, symbols=[*base.symbols, "ETHUSDT"])),
        ("trials x2", replace(base, trials=2 * base.trials)),
    ]
    first = None
    for label, req in rows:
        s = timed_sweep(label, req)
        first = first or s.wall_s
        print(
            f"{label:<11} symbols {len(req.symbols)}  val origins {req.val_origins:>4}  trials {s.trials:>4}  "
            f"{s.wall_s:6.1f} s  ({s.wall_s / first:.2f}x base)"
        )


def parallel(req: RunRequest) -> None:
    pairs = [
        ("optuna", replace(req, jobs=1), replace(req, jobs=2)),
        ("ray", replace(req, engine="ray", workers=1), replace(req, engine="ray", workers=2)),
    ]
    for engine, one, two in pairs:
        a, b = timed_sweep("1", one), timed_sweep("2", two)
        what = "processes (--jobs)" if engine == "optuna" else "workers (--workers)"
        print(
            f"{engine:<6} {req.backends[0]} {req.trials} trials: 1 -> {a.wall_s:6.1f} s, "
            f"2 {what} -> {b.wall_s:6.1f} s, speed-up {a.wall_s / b.wall_s:.2f}x"
        )


def _memory_mb() -> tuple[float, float]:
    """Resident and peak resident memory of this process (VmHWM: unlike ru_maxrss it does not carry the
    parent's peak over a fork + exec)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _memory_child(req: RunRequest, marks: tuple[int, ...]) -> list[tuple[int, float, float]]:
    """Runs in a fresh process: resident and peak memory when the study reaches each mark."""
    seen: list[tuple[int, float, float]] = []

    def progress(_label: str, done: int, _total: int) -> None:
        if done in marks and done not in [m for m, _, _ in seen]:
            seen.append((done, *_memory_mb()))

    with tempfile.TemporaryDirectory() as tmp:
        run(req, RunPaths(Path(tmp), "bench"), progress=progress)
    return seen


def memory(req: RunRequest, marks: tuple[int, ...] = (250, 500, 1000)) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        seen = pool.apply(_memory_child, (req, marks))
    for done, rss, peak in seen:
        print(f"after {done:>5} trials: resident {rss:7.1f} MiB, peak {peak:7.1f} MiB")


def section(title: str, body: Callable[[], None]) -> None:
    print(f"\n== {title} ==", flush=True)
    start = time.perf_counter()
    body()
    print(f"({time.perf_counter() - start:.0f} s)", flush=True)


def baseline_sweeps(trials: int) -> None:
    for backends in (["naive"], ["naive", "drift", "seasonal_naive"]):
        req = RunRequest(
            ["BTCUSDT", "ETHUSDT"],
            lake=LAKE,
            freq="1h",
            backends=backends,
            trials=trials,
            val_origins=500,
            test_origins=200,
        )
        s = timed_sweep("+".join(backends), req)
        print(f"{s.label:<30} {s.trials:>5} trials  {s.wall_s:6.1f} s  {s.trials / s.wall_s:6.1f} trials/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200, help="trials per study in sections 1 and 2 (naive)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; lake {LAKE}")
    naive = RunRequest(
        ["BTCUSDT"], lake=LAKE, freq="1h", backends=["naive"], trials=args.trials, val_origins=500, test_origins=200
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = model_request(replace(naive, trials=100, val_origins=200, test_origins=50), Path(tmp) / MODEL)
        section(
            "1. baseline sweep: BTCUSDT + ETHUSDT 1h, 500 validation + 200 test origins",
            lambda: baseline_sweeps(args.trials),
        )

        def vs_loop() -> None:
            against_naive_loop(naive)
            if model:
                against_naive_loop(model)

        section("2. against the naive loop (same backend, data, origins, space, trials)", vs_loop)
        section(
            "3a. scaling (naive, optuna engine): wall time as origins, symbols, trials double",
            lambda: scaling(replace(naive, trials=100, val_origins=250, test_origins=50)),
        )
        if model:
            section(
                f"3b. parallel: {MODEL} tiny, 100 val origins, 40 trials, on {os.cpu_count()} cores",
                lambda: parallel(replace(model, trials=40, val_origins=100)),
            )
        section("3c. parallel: naive, 500 val origins, 100 trials", lambda: parallel(replace(naive, trials=100)))
        section(
            "4. memory of one 1,000-trial sweep (naive, BTCUSDT 1h, 500 val origins)",
            lambda: memory(replace(naive, trials=1000)),
        )
        section(
            "5. model backends, tiny presets on CPU, one torch thread, 64 origins, each in a fresh process",
            lambda: print_table(list(LIBRARIES)),
        )
        section(
            "6. fine-tuning: steps/s and peak memory per backend, tiny and small (published) shapes, CPU",
            finetune_table,
        )
    from bench import published  # here: bench.published imports this module

    section(
        "7. published shapes (small presets): naive loop vs sweep run, BTCUSDT 1h, 40 val + 10 test origins",
        lambda: published.run_all(list(published.BACKENDS), 20, 90.0, 240.0),
    )


if __name__ == "__main__":
    main()
