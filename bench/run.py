"""`make bench`: measured numbers for the README, side by side in one run. Not a test: nothing here asserts.

Section 1 (the foundation's target): a 200-trial sweep of the baselines over two hourly symbols of the
shared lake with 500 validation origins each, on this machine, end to end through `sweep run`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from sweeper.store import RunPaths
from sweeper.sweep import RunRequest, run

SHARED_LAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv"


def baseline_sweep(backends: list[str], trials: int = 200, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")) -> dict:
    lake = os.environ.get("SWEEP_BENCH_LAKE", str(SHARED_LAKE))
    req = RunRequest(
        list(symbols), lake=lake, freq="1h", backends=backends, trials=trials, val_origins=500, test_origins=200
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run(req, RunPaths(Path(tmp), "bench"))
        wall = time.perf_counter() - start
    n = trials * len(backends) * len(symbols)
    return {
        "backends": "+".join(backends),
        "symbols": len(symbols),
        "trials": n,
        "wall_s": wall,
        "trials_per_s": n / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs")
    print("\n== 1. baseline sweep: 2 hourly symbols (BTCUSDT, ETHUSDT), 500 validation + 200 test origins ==")
    for backends in (["naive"], ["naive", "drift", "seasonal_naive"]):
        r = baseline_sweep(backends, args.trials)
        print(f"{r['backends']:<30} {r['trials']:>5} trials  {r['wall_s']:6.1f} s  {r['trials_per_s']:6.1f} trials/s")


if __name__ == "__main__":
    main()
