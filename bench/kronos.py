"""Kronos backend speed on this machine: forecasts per second and peak memory, tiny random checkpoint.

A forecast is one origin's full set of sample paths. Called from `make bench` (bench/run.py); also
`python -m bench.kronos` on its own.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from sweeper.backends.kronos import KronosBackend
from sweeper.data import load
from sweeper.plan import contexts

SHARED_LAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv"


def _rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_kronos(
    origins: int = 32,
    context_length: int = 128,
    num_samples: int = 32,
    horizons: tuple[int, ...] = (1, 24),
    preset: str = "tiny",
    threads: int = 1,
    lake: Path = SHARED_LAKE,
) -> dict:
    """Time `forecast` on real BTCUSDT 1h candles at the search space's default knobs, one row per horizon.

    One torch thread by default: what each of two concurrent trials gets on a 2-core machine.
    """
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    series = load(lake, ["BTCUSDT"], "1h")[0]
    idx = np.arange(len(series) - max(horizons) - origins, len(series) - max(horizons))
    knobs = {"context_length": context_length, "temperature": 1.0, "top_p": 0.9, "top_k": 0, "clip": 5.0}
    with tempfile.TemporaryDirectory() as tmp:
        model = KronosBackend(str(KronosBackend.init_checkpoint(preset, Path(tmp))), "cpu")
    ctx = contexts(series, idx, context_length)
    model.forecast(ctx, 1, 2, knobs, seed=0)  # warm-up: first-call allocations and kernel choice
    rss_loaded = _rss_mb()
    rows = []
    for h in horizons:
        start = time.perf_counter()
        model.forecast(ctx, h, num_samples, knobs, seed=0)
        wall = time.perf_counter() - start
        rows.append({"horizon": h, "wall_s": round(wall, 3), "forecasts_per_s": round(origins / wall, 2)})
    torch.set_num_threads(previous_threads)
    return {
        "backend": "kronos",
        "preset": preset,
        "device": "cpu",
        "threads": threads,
        "origins": origins,
        "context_length": context_length,
        "num_samples": num_samples,
        "runs": rows,
        "peak_rss_mb": round(_rss_mb(), 1),
        "peak_rss_forecast_growth_mb": round(_rss_mb() - rss_loaded, 1),
    }


if __name__ == "__main__":
    print(bench_kronos())
