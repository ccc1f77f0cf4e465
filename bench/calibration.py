"""How often equally good forecasts are called different: the calibration table of `sweeper/compare.py`.

`python -m bench.calibration [--reps R] [--boot-reps B]` prints the table in the README's "Evaluation
protocol". Each cell is the share of "beyond noise" verdicts at 95% on score differences whose true mean is
zero (nominal: 5%), for n = 30, 200 and 500 origins:

- simulated nulls: iid normal, AR(1) with 0.3 / 0.6 / 0.9, MA(5) (what an H = 6 overlap alone produces;
  tested with H = 6) and Student-t(3) heavy tails;
- real nulls: per-origin CRPS differences of naive against drift at H = 6 on the shared lake's hourly
  candles, each symbol's differences demeaned (so equal skill holds exactly), cut into disjoint windows
  of n consecutive origins: the real mix of overlap, volatility clustering and heavy tails.

Columns: the verdict (`dm_test`, what `within_noise` reads), the same statistic with the Harvey-Leybourne-
Newbold factor, and how often the stationary-bootstrap interval excludes zero (what the interval alone
would say; fewer replications, it is the slow one). `tests/test_calibration.py` asserts the verdict's band
on the same generators with fewer replications.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sweeper.backends.baselines import Drift, Naive
from sweeper.compare import LEVEL, dm_test, paired_bootstrap
from sweeper.data import load
from sweeper.metrics import crps
from sweeper.plan import contexts, targets

SHARED_LAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv"
REAL_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT", "XRPUSDT", "LTCUSDT")
REAL_HORIZON = 6
SIZES = (30, 200, 500)
BURN = 200


def _ar1(phi: float) -> Callable[[int, np.random.Generator], np.ndarray]:
    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        e = rng.normal(size=n + BURN)
        x = np.empty_like(e)
        x[0] = e[0]
        for t in range(1, e.size):
            x[t] = phi * x[t - 1] + e[t]
        return x[BURN:]

    return draw


def _ma(q: int) -> Callable[[int, np.random.Generator], np.ndarray]:
    return lambda n, rng: np.convolve(rng.normal(size=n + q), np.ones(q + 1), mode="valid")


# name -> (horizon the test is told, generator of one null difference series of length n)
SIMULATED: dict[str, tuple[int, Callable[[int, np.random.Generator], np.ndarray]]] = {
    "iid normal": (1, lambda n, rng: rng.normal(size=n)),
    "AR(1) 0.3": (1, _ar1(0.3)),
    "AR(1) 0.6": (1, _ar1(0.6)),
    "AR(1) 0.9": (1, _ar1(0.9)),
    "MA(5), H=6": (6, _ma(5)),
    "Student-t(3)": (1, lambda n, rng: rng.standard_t(3, size=n)),
}


def simulated(case: str, n: int, reps: int, seed: int = 0) -> tuple[int, list[np.ndarray]]:
    horizon, draw = SIMULATED[case]
    rng = np.random.default_rng(seed)
    return horizon, [draw(n, rng) for _ in range(reps)]


def real_differences(
    symbols: tuple[str, ...] = REAL_SYMBOLS, origins: int = 30000, lake: Path = SHARED_LAKE, draws: int = 100
) -> list[np.ndarray]:
    """Demeaned per-origin CRPS differences, naive - drift, H = REAL_HORIZON, the last `origins` origins
    (context 128) of each symbol's hourly candles, in units of 1e-4 of the last close."""
    out = []
    for s in load(lake, list(symbols), "1h"):
        o = np.arange(128, len(s) - REAL_HORIZON + 1)[-origins:]
        ctx, y = contexts(s, o, 128), targets(s, o, REAL_HORIZON)
        a, b = (np.sort(m().forecast(ctx, REAL_HORIZON, draws, {}, 0), axis=1) for m in (Naive, Drift))
        d = (crps(a, y, presorted=True) - crps(b, y, presorted=True)) / ctx.close[:, -1] * 1e4
        out.append(d - d.mean())
    return out


def windows(series: list[np.ndarray], n: int) -> list[np.ndarray]:
    return [d[i : i + n] for d in series for i in range(0, d.size - n + 1, n)]


def share_dm(samples: list[np.ndarray], horizon: int, hln: bool = False) -> float:
    """Share of samples the DM test calls beyond noise at LEVEL."""
    return float(np.mean([dm_test(d, horizon, hln)[1] < 1 - LEVEL for d in samples]))


def share_interval(samples: list[np.ndarray], horizon: int, n_boot: int) -> float:
    """Share of samples whose stationary-bootstrap interval excludes zero."""
    zero = np.zeros(samples[0].size)
    hits = [
        not (c.low <= 0 <= c.high)
        for c in (paired_bootstrap(d, zero, "d", horizon, i, n_boot) for i, d in enumerate(samples))
    ]
    return float(np.mean(hits))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=4000, help="simulated series per cell for the DM columns")
    ap.add_argument("--boot-reps", type=int, default=400, help="series per cell for the bootstrap column")
    ap.add_argument("--boot", type=int, default=500, help="bootstrap resamples per interval")
    args = ap.parse_args()
    start = time.perf_counter()
    real = real_differences()
    print("| null differences | n | samples | DM verdict (used) | DM + HLN factor | bootstrap interval excludes 0 |")
    print("|---|---|---|---|---|---|")
    for n in SIZES:
        rows = [(case, *simulated(case, n, args.reps, seed=n)) for case in SIMULATED]
        rows.append((f"real: naive - drift, H={REAL_HORIZON}", REAL_HORIZON, windows(real, n)))
        for name, horizon, samples in rows:
            cells = (
                share_dm(samples, horizon),
                share_dm(samples, horizon, hln=True),
                share_interval(samples[: args.boot_reps], horizon, args.boot),
            )
            shown = " | ".join(f"{c:.1%}" for c in cells)
            print(f"| {name} | {n} | {len(samples)} ({min(len(samples), args.boot_reps)}) | {shown} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
