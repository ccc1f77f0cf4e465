"""Shared test helpers: real candles from the shared lake, and the no-leak check every backend must pass."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl

from sweeper.backends.base import Backend
from sweeper.data import COLUMNS, Series, load
from sweeper.plan import contexts
from sweeper.search import storage_for

SHARED_LAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv"
SMALL = ["--val-origins", "120", "--test-origins", "40"]
SWEEP_BIN = [sys.executable, "-c", "from sweeper.cli import main; main()"]
FILE = "asset_class=crypto/freq=1d/symbol=ETHUSD/year=2018/month=03/part.parquet"  # one month of small_lake


def corrupt(lake: Path, change: Callable[[pl.DataFrame], pl.DataFrame], file: str = FILE) -> Path:
    """Rewrite one Parquet file of a lake through `change`; returns its path."""
    path = lake / file
    df = pl.read_parquet(path)
    change(df).write_parquet(path)
    return path


def set_cell(col: str, row: int, value: Any) -> Callable[[pl.DataFrame], pl.DataFrame]:
    return lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(pl.col(col)).alias(col)
    )


def assert_clean_failure(result: Any, out: Path, pattern: str) -> None:
    """The promise for bad input: exit code 2, one line on stderr matching `pattern`, nothing written."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not (out / "results").exists() and not (out / "hyperparams").exists()


def shared_series(symbol: str, freq: str, last: int | None = None) -> Series:
    """A real series from ../shared/data/ohlcv, optionally only its last `last` bars."""
    s = load(SHARED_LAKE, [symbol], freq)[0]
    if last is None:
        return s
    return Series(s.symbol, s.freq, s.asset_class, s.ts[-last:].copy(), s.ohlcv[-last:].copy(), s.source)


def bars_frame(series: Series) -> pl.DataFrame:
    """A series as the frame of bars a trading script holds (the lake's columns)."""
    return pl.DataFrame({"ts": series.ts, **{c: series.ohlcv[:, i] for i, c in enumerate(COLUMNS[1:])}})


def assert_no_leak(
    model: Backend,
    series: Series,
    knobs: Mapping[str, Any],
    origins: np.ndarray,
    horizon: int,
    num_samples: int = 8,
    seed: int = 0,
) -> None:
    """Changing any bar at or after an origin must not change that origin's forecast.

    Forecasts each origin from the real series, then from a copy whose bars from the origin onwards are
    wildly different (prices x 10, volume x 100, timestamps kept); the draws must be identical.
    """
    ctx_len = int(knobs["context_length"])
    for o in origins:
        batch = np.array([o])
        before = model.forecast(contexts(series, batch, ctx_len), horizon, num_samples, knobs, seed)
        future = series.ohlcv.copy()
        future[o:, :4] *= 10.0
        future[o:, 4] = future[o:, 4] * 100.0 + 1.0
        poisoned = Series(series.symbol, series.freq, series.asset_class, series.ts, future, series.source)
        after = model.forecast(contexts(poisoned, batch, ctx_len), horizon, num_samples, knobs, seed)
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after), err_msg=f"origin row {o} leaks")
        # and the check itself can fail: poisoning the bar just before the origin must change the forecast
        past = series.ohlcv.copy()
        past[o - 1, :4] *= 10.0
        moved = Series(series.symbol, series.freq, series.asset_class, series.ts, past, series.source)
        changed = model.forecast(contexts(moved, batch, ctx_len), horizon, num_samples, knobs, seed)
        assert not np.array_equal(np.asarray(before), np.asarray(changed)), f"origin row {o}: context ignored"


def storage_of(store: Path) -> optuna.storages.BaseStorage:
    """The Optuna storage of a run's store file: its journal (`study.journal`, the default) or SQLite file."""
    return storage_for(f"journal:{store.resolve()}" if store.suffix == ".journal" else f"sqlite:///{store}")


def count_trials(store: Path) -> int:
    """Finished (COMPLETE or PRUNED) trials of every study in a run's store file; 0 before it exists."""
    if not store.exists():
        return 0
    storage = storage_of(store)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(
        len(optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False, states=done))
        for s in optuna.get_all_study_summaries(storage)
    )


def sweep_command(out: Path, run_id: str, backends: list[str], trials: int, *extra: str) -> list[str]:
    """A real `sweep run` of ETHUSD daily bars on the shared lake, as a command line."""
    return [*SWEEP_BIN, "run", "--symbols", "ETHUSD", "--lake", str(SHARED_LAKE), "--backends", *backends,
            "--trials", str(trials), "--run-id", run_id, "--out", str(out), *SMALL, *extra]  # fmt: skip


def start_sweep(cmd: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start a command in its own process group (so a signal reaches it and its workers only)."""
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip


def wait_for_trials(db: Path, after: int, timeout: float = 60) -> None:
    """Until the study in `db` holds `after` trials; a test that would go on without them fails here."""
    deadline = time.time() + timeout
    while not db.exists() or count_trials(db) < after:
        if time.time() >= deadline:
            held = count_trials(db) if db.exists() else 0
            raise AssertionError(f"{db} holds {held} trials after {timeout:.0f} s, the test needs {after}")
        time.sleep(0.05)


def signal_mid_sweep(tmp_path: Path, run_id: str, backends: list[str], trials: int, after: int, sig: int):
    """Start a real `sweep run` in its own process group and send it `sig` once `after` trials are done."""
    proc = start_sweep(sweep_command(tmp_path, run_id, backends, trials))
    db = tmp_path / "results" / run_id / "study.journal"
    wait_for_trials(db, after)
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    return proc, stderr, db


def assert_draws_per_origin(
    model: Backend,
    series: Series,
    knobs: Mapping[str, Any],
    origins: np.ndarray,
    horizon: int,
    num_samples: int,
    stranger: int,
    rtol: float = 0.0,
) -> None:
    """An origin's draws depend on its own seed and context alone: the same in a batch of many as in a batch
    of one, and whatever its neighbours (the batch reversed, one origin replaced by `stranger`, a row).

    Seeds as the forecaster gives them (one per origin); `rtol` allows float32 rounding of batched matmuls.
    """
    ctx_len = int(knobs["context_length"])
    seeds = np.arange(origins.size) * 7919 + 13
    batch = model.forecast(contexts(series, origins, ctx_len), horizon, num_samples, knobs, seeds)
    for i, o in enumerate(origins):
        alone = model.forecast(contexts(series, np.array([o]), ctx_len), horizon, num_samples, knobs, seeds[i : i + 1])
        np.testing.assert_allclose(batch[i], alone[0], rtol=rtol, err_msg=f"origin {i} of the batch differs alone")
    order = np.arange(origins.size)[::-1]
    others = origins[order].copy()
    others[0] = stranger
    moved = model.forecast(contexts(series, others, ctx_len), horizon, num_samples, knobs, seeds[order])
    for k, i in enumerate(order[1:], start=1):
        np.testing.assert_allclose(moved[k], batch[i], rtol=rtol, err_msg=f"origin {i} moved with its neighbours")
    assert not np.allclose(moved[0], batch[order[0]]), "the stranger drew its neighbour's paths"


def assert_live_forecast_is_recorded(config: Path, backend: str, ensemble: bool = False, rtol: float = 1e-6) -> None:
    """`load_config(config).forecast(bars before a recorded origin)` is that origin's row of origins.parquet
    (point and every quantile, to float32 rounding), for `backend`'s best knobs or the ensemble: at a
    validation origin in the middle of its batch and at the last test origin, the last of its batch."""
    from sweeper import load_config
    from sweeper.metrics import LEVELS
    from sweeper.store import level_column

    cfg = json.loads(config.read_text())
    origins = pl.read_parquet(config.parents[2] / "results" / cfg["run_id"] / "origins.parquet")
    recorded = origins.filter(symbol=cfg["symbol"], candidate="ensemble" if ensemble else backend)
    predictor = load_config(config, ensemble=True) if ensemble else load_config(config, backend=backend)
    bars = bars_frame(load(Path(cfg["data"]["lake"]), [cfg["symbol"]], cfg["freq"])[0])
    for split, at in (("val", 6), ("test", -1)):
        row = recorded.filter(split=split).sort("origin_row").row(at, named=True)
        f = predictor.forecast(bars.head(row["origin_row"]))
        np.testing.assert_allclose(f.point, row["point"], rtol=rtol, err_msg=f"{split} origin {row['origin_row']}")
        for q in LEVELS:
            np.testing.assert_allclose(f.quantiles[q], row[level_column(q)], rtol=rtol)


V1_CONFIG = Path(__file__).parent / "data" / "config_v1_SOLUSDT_1d.json"
"""A schema 1 config as sweep 55afcf6^ wrote it (`sweep run --symbols SOLUSDT --freq 1d --horizon 3 --trials 4
--val-origins 60 --test-origins 20` on the shared lake); its lake path is recorded relative to the folder above
the repository, as older versions recorded paths relative to the folder the sweep ran in."""
