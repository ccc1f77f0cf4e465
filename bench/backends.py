"""Speed of the model backends on this machine, with tiny random checkpoints.

Each backend is measured in a fresh interpreter, so its import time and peak memory are its own: the
import of its model library, loading the checkpoint through the backend's constructor, and forecasts per
second (one forecast = one origin's full set of sample paths) at the search space's default knobs, on
real BTCUSDT 1h candles, origins in batches chosen as a sweep chooses them (`sweeper.batching`).
`python -m bench.backends` prints a table; `make bench` (bench/run.py) can call `bench_backend`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SHARED_LAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv"
LIBRARIES = {
    "toto": ("toto.model.toto", "toto.inference.forecaster"),
    "moirai": ("uni2ts.model.moirai",),
    "moirai2": ("uni2ts.model.moirai2",),
    "kronos": ("model",),
    "marketgpt": ("sweeper.marketgpt.model",),
}


def bench_backend(
    backend: str,
    preset: str = "tiny",
    origins: int = 64,
    horizons: tuple[int, ...] = (1, 24),
    num_samples: int | None = None,
    threads: int = 1,
    lake: Path = SHARED_LAKE,
) -> dict[str, Any]:
    """Measure one backend in a fresh interpreter; returns import/load seconds, forecasts/s per horizon, peak RSS.

    `num_samples` defaults to the space's largest sample count (what a sweep draws and caches). One torch
    thread by default: what each of two concurrent trials gets on a 2-core machine.
    """
    args = {
        "backend": backend, "preset": preset, "origins": origins, "horizons": list(horizons),
        "num_samples": num_samples, "threads": threads, "lake": str(lake),
    }  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bench.backends", "--child", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=Path(__file__).parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    """The child's side: everything timed from a cold interpreter."""
    import warnings

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in LIBRARIES[args["backend"]]:
            importlib.import_module(name)
    import_s = time.perf_counter() - start

    import torch

    from sweeper.backends import backend_class
    from sweeper.batching import BatchSizes
    from sweeper.data import load
    from sweeper.plan import contexts
    from sweeper.space import load_space

    torch.set_num_threads(args["threads"])
    cls = backend_class(args["backend"])
    space = load_space(args["backend"])
    knobs = space.defaults() or {}
    n = args["num_samples"] or space.max_samples
    series = load(Path(args["lake"]), ["BTCUSDT"], "1h")[0]
    end = len(series) - max(args["horizons"])
    idx = np.arange(end - args["origins"], end)
    with tempfile.TemporaryDirectory() as tmp:
        folder = cls.init_checkpoint(args["preset"], Path(tmp) / "ck")
        start = time.perf_counter()
        model = cls(str(folder), "cpu")
        load_s = time.perf_counter() - start
    ctx_len = int(knobs["context_length"])
    model.forecast(contexts(series, idx[:2], ctx_len), 1, 2, knobs, seed=0)  # warm-up
    rss_loaded = _peak_rss_mb()
    sizes = BatchSizes(cls.batch_size, cls.batch_ceiling)
    runs = []
    for h in args["horizons"]:

        def call(b: np.ndarray, h: int = h) -> np.ndarray:
            return model.forecast(contexts(series, b, ctx_len), h, n, knobs, seed=int(b[0]))

        start = time.perf_counter()
        sizes.run(idx, (ctx_len, h), call)
        wall = time.perf_counter() - start
        runs.append({"horizon": h, "wall_s": round(wall, 3), "forecasts_per_s": round(idx.size / wall, 1)})
    return {
        "backend": args["backend"],
        "preset": args["preset"],
        "threads": args["threads"],
        "origins": int(idx.size),
        "num_samples": n,
        "knobs": {k: v for k, v in knobs.items() if k not in ("num_samples", "aggregation")},
        "import_s": round(import_s, 2),
        "load_s": round(load_s, 3),
        "runs": runs,
        "batch_sizes": sizes.chosen(),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "forecast_rss_growth_mb": round(_peak_rss_mb() - rss_loaded, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--backends", nargs="+", default=list(LIBRARIES))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(json.loads(args.child))))
        return
    print_table(args.backends, args.preset, args.threads)


def print_table(backends: list[str], preset: str = "tiny", threads: int = 1) -> None:
    for backend in backends:
        r = bench_backend(backend, preset=preset, threads=threads)
        speeds = "  ".join(f"H={x['horizon']}: {x['forecasts_per_s']:>7.1f}/s" for x in r["runs"])
        print(
            f"{backend:<8} {r['preset']:<5} import {r['import_s']:5.1f} s  load {r['load_s']:5.2f} s  "
            f"{r['num_samples']} draws  {speeds}  batches {r['batch_sizes']}  peak RSS {r['peak_rss_mb']:.0f} MB  "
            f"({r['knobs']})"
        )


if __name__ == "__main__":
    main()
