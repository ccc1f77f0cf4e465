"""`make bench-published`: the naive loop against `sweep run` on the published model shapes. Not a test.

For every model backend, a random checkpoint with the published small shapes (`sweep models init BACKEND
--preset small`; MarketGPT's small preset through its own train path, bins fitted, no steps): random
weights cost exactly the compute trained ones do. BTCUSDT 1h from the shared lake, 40 validation + 10 test
origins, the shipped search space, the same trial count and seeded TPE on both sides, on this machine.

- naive loop: per trial load the model, forecast each validation origin on its own at the trial's sample
  count, aggregate, score (bench.run.naive_loop); it stops after `--loop-budget` seconds and its rate
  comes from the trials it finished (plus the share of origins of one it was cut short in).
- sweep: the whole `sweep run` (search with pruning, selection, test origins, files), in this process.
- floor: the sum of the (partial) forward passes the sweep's trials needed, each timed when it ran.
- time-to-quality: the loop's wall time to its best validation CRPS over the sweep's wall time to a
  complete trial at least as good (same origins, and each origin seeded as the sweep seeds it, so one
  configuration scores the same on both sides: with a shared seed for every origin the loop's values
  spread wider and its best was a luckier draw than any the sweep's, n/a for moirai and moirai2 on
  2026-12-06); n/a when the sweep never got there or the loop finished no trial within its budget.

One line per backend, in the form the README quotes:
    published <backend>: naive loop X trials/min, sweep Y trials/min, ratio Rx, wall/floor Fx, time-to-quality Tx
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.run import LAKE, Loop, Sweep, naive_loop, timed_sweep
from sweeper.backends import backend_class
from sweeper.sweep import RunRequest, prepare

BACKENDS = ("toto", "moirai", "moirai2", "kronos", "marketgpt")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def small_checkpoint(backend: str, out: Path, req: RunRequest) -> Path:
    """`sweep models init BACKEND --preset small`; MarketGPT through its own train path (`sweep train
    marketgpt --preset small`) with no steps: bins fitted on the bench symbol's bars before its validation
    origins, random weights."""
    if backend == "marketgpt":
        from sweeper.marketgpt.train import train
        from sweeper.plan import Protocol

        protocol = Protocol(val_origins=req.val_origins, test_origins=req.test_origins)
        train(req.symbols, req.freq, LAKE, "small", out, max_steps=0, progress=False, protocol=protocol)
        return out
    return backend_class(backend).init_checkpoint("small", out)


def time_to_quality(loop: Loop, ours: Sweep) -> float | None:
    """Loop's seconds to its best value over the sweep's seconds to one at least as good (None: never, or
    the loop finished no trial)."""
    if not loop.history:
        return None
    best = min(v for _, v in loop.history)
    t_loop = next(t for t, v in loop.history if v == best)
    t_ours = next((t for t, v in ours.history if v <= best), None)
    return None if t_ours is None else t_loop / t_ours


def measure(backend: str, req: RunRequest, loop_budget_s: float) -> str:
    prep = prepare(req)
    prep.tasks[0].forecaster.model(backend)  # import the library once, for neither side to pay
    loop = naive_loop(prep.tasks[0], backend, req.checkpoints[backend], req.trials, req.metric, req.seed, loop_budget_s)
    ours = timed_sweep(backend, req)
    ttq = time_to_quality(loop, ours)
    line = (
        f"published {backend}: naive loop {loop.per_min:.1f} trials/min, sweep {ours.per_min:.1f} trials/min, "
        f"ratio {ours.per_min / loop.per_min:.1f}x, wall/floor {ours.wall_s / ours.floor_s:.2f}x, "
        f"time-to-quality {'n/a' if ttq is None else f'{ttq:.1f}x'}"
    )
    detail = (
        f"    loop {loop.trials:.2f} trials in {loop.wall_s:.0f} s; sweep {ours.trials} trials ({ours.pruned} pruned) "
        f"in {ours.wall_s:.0f} s, floor {ours.floor_s:.0f} s over {ours.misses} cache entries | {uptime()}"
    )
    return f"{line}\n{detail}"


def best_of(f: Callable[[], None], runs: int = 3) -> float:
    """Seconds of the fastest of `runs` calls, after one warm-up call (first calls pay one-off set-up)."""
    f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def kronos_sampler(ckpt: Path, origins: int = 2, draws: int = 8, context: int = 128) -> str:
    """Kronos small: our shared-context sampler against the package's auto_regressive_inference on the same
    origins and draws (both sides of the loop above use ours), per horizon; ours without reusing context
    passes between calls (the sweep above reuses them, sweeper.passes)."""
    import numpy as np
    import torch
    from model.kronos import auto_regressive_inference

    from sweeper.backends.kronos import KronosBackend, _features, _time_features
    from sweeper.data import load
    from sweeper.passes import ContextPasses
    from sweeper.plan import contexts

    model = backend_class("kronos")(str(ckpt), "cpu")
    model.passes = ContextPasses(0)  # every call runs its context pass, as the package's sampler does
    series = load(Path(LAKE), ["BTCUSDT"], "1h")[0]
    out = []
    for horizon in (1, 4):
        ctx = contexts(series, np.arange(len(series) - horizon - origins, len(series) - horizon), context)
        x = _features(ctx.values.astype(np.float64))
        z = torch.from_numpy(((x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-5)).astype(np.float32))
        xs, ys = (torch.from_numpy(_time_features(t)) for t in (ctx.ts, ctx.future_ts(horizon)))

        def ours(h: int = horizon, c: Any = ctx) -> None:
            model.forecast(c, h, draws, {**KronosBackend.defaults(), "context_length": context}, seed=0)

        def theirs(h: int = horizon, z: Any = z, xs: Any = xs, ys: Any = ys) -> None:
            with torch.inference_mode():
                auto_regressive_inference(model.tokenizer, model.model, z, xs, ys, 512, h, sample_count=draws)

        ours_s, theirs_s = (best_of(f) for f in (ours, theirs))
        out.append(f"H={horizon}: {1000 * ours_s / origins:.0f} vs {1000 * theirs_s / origins:.0f} ms/origin")
    return f"    kronos sampler, {draws} draws, context {context}, ours vs the package's: {'; '.join(out)}"


def run_all(backends: list[str], trials: int, loop_budget_s: float, timeout_s: float | None) -> None:
    print(f"machine: {os.cpu_count()} CPUs, no GPU used (--device cpu); lake {LAKE}; {uptime()}", flush=True)
    base = RunRequest(
        ["BTCUSDT"], lake=LAKE, freq="1h", trials=trials, val_origins=40, test_origins=10, device="cpu",
        timeout=timeout_s,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            start = time.perf_counter()
            ckpt = small_checkpoint(backend, Path(tmp) / backend, base)
            req = replace(base, backends=[backend], checkpoints={backend: str(ckpt)})
            print(measure(backend, req, loop_budget_s), f"({time.perf_counter() - start:.0f} s)", flush=True)
            if backend == "kronos":
                print(kronos_sampler(ckpt), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--trials", type=int, default=100, help="trials per side and backend (default 100)")
    parser.add_argument("--loop-budget", type=float, default=90.0, help="seconds the naive loop may run per backend")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the sweep's study may run per backend")
    args = parser.parse_args()
    run_all(args.backends, args.trials, args.loop_budget, args.timeout)


if __name__ == "__main__":
    main()
