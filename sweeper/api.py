"""From a config to a forecast: what a trading script calls.

    from sweeper import load_config

    predictor = load_config("hyperparams/best/BTCUSDT/1h-h1.json")   # ensemble=True: the ensemble
    f = predictor.forecast(bars)          # polars or pandas frame: ts, open, high, low, close, volume
    f.point, f.quantiles[0.9], f.frame()

A forecast here is the sweep's forecast of the same bars, not a re-implementation of it: the draws come
from the same `Forecaster` (seeded per origin from the configuration and the last bar's time; every
backend's draws of an origin depend on its own seed and context alone, so a batch of one draws what the
sweep's batches drew), a
candidate keeps the first `num_samples` of the config's `draws` and aggregates them (`from_draws`), an
ensemble is the weighted mixture of its members (`ensemble.mixture`), and the quantiles are read as the
scores read them (`metrics.quantiles`). So a forecast made from the bars before a recorded origin equals
that origin's row of `origins.parquet`. A fine-tuned candidate forecasts from the weights of its latest
recorded cut, which are just another checkpoint to the `Forecaster` (loaded by key, or re-fitted from the
same bars into a cache folder when the run folder is gone).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sweeper import metrics
from sweeper.data import Series, bars_series, load, resolve_lake
from sweeper.ensemble import mixture
from sweeper.errors import SweepError
from sweeper.evaluate import config_forecaster
from sweeper.finetune.fit import FinetuneStore
from sweeper.finetune.settings import FinetuneSettings
from sweeper.finetune.tuner import recorded_checkpoint
from sweeper.forecast import Forecaster
from sweeper.objective import Forecast, from_draws
from sweeper.plan import contexts
from sweeper.record import Config
from sweeper.select import ENSEMBLE
from sweeper.store import level_column
from sweeper.workspace import Workspace


@dataclass(frozen=True)
class Prediction:
    """The next H bars after `last_ts`: point and quantiles per bar; the draws when asked for."""

    symbol: str
    freq: str
    candidate: str  # the backend forecasting, or "ensemble"
    last_ts: np.datetime64  # the last bar the forecast saw (UTC)
    ts: np.ndarray  # (H,) open times of the forecast bars: the bar length stepped, closed weekdays skipped
    point: np.ndarray  # (H,)
    quantiles: dict[float, np.ndarray]  # level (metrics.LEVELS) -> (H,)
    draws: np.ndarray | None = None  # (N, H), sorted per bar
    weights: np.ndarray | None = None  # (N,) per-draw weights of an ensemble's mixture; None: equal

    def frame(self) -> pl.DataFrame:
        """One row per forecast bar: symbol, candidate, ts (UTC), step, point, q05 ... q95."""
        return pl.DataFrame(
            {
                "symbol": self.symbol,
                "candidate": self.candidate,
                "ts": pl.Series(self.ts.astype("datetime64[us]")).dt.replace_time_zone("UTC"),
                "step": np.arange(1, self.ts.size + 1),
                "point": self.point,
                **{level_column(q): v for q, v in self.quantiles.items()},
            }
        )

    def records(self) -> list[dict[str, Any]]:
        """The frame's rows with ISO timestamps, and the frequency and last bar seen (`sweep forecast --json`)."""
        last = f"{self.last_ts.astype('datetime64[s]')}Z"
        return [
            {**r, "ts": r["ts"].isoformat(), "freq": self.freq, "last_ts": last}
            for r in self.frame().iter_rows(named=True)
        ]


def print_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def default_cache() -> Path:
    """Where live forecasts re-fit fine-tuned weights whose run folder is gone: $XDG_CACHE_HOME/sweep/finetuned
    (else ~/.cache/sweep/finetuned), keyed like a run's, so the next forecast loads them."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweep" / "finetuned"


class Predictor:
    """A config ready to forecast: its members (one, or an ensemble's) and their weights, and one
    forecaster with the config's seed and checkpoints (each model is loaded once)."""

    def __init__(
        self,
        config: Config,
        ensemble: bool = False,
        backend: str | None = None,
        device: str = "auto",
        cache: Path | None = None,
        say: Callable[[str], None] | None = print_note,
    ) -> None:
        self.config = config
        if ensemble and backend:
            raise SweepError("forecast with the ensemble or with one backend, not both")
        if ensemble:
            if config.ensemble is None:
                raise SweepError(f"config for {config.symbol} has no ensemble")
            self.name, self.weights = ENSEMBLE, dict(config.ensemble.weights)
            self.members = {name: config.candidate(name) for name in self.weights}
        else:
            cand = config.candidate(backend) if backend else config.chosen_candidate()
            self.name = backend or cand.backend
            self.weights, self.members = {self.name: 1.0}, {self.name: cand}
        self.forecaster: Forecaster = config_forecaster(config, device)
        for name, c in self.members.items():  # a fine-tuned member forecasts from its weights: as the base
            if FinetuneSettings.from_knobs(c.params).active:
                self.forecaster.checkpoints[c.backend] = str(live_weights(config, name, cache, device, say))

    @property
    def context_length(self) -> int:
        """Bars a forecast needs: the longest context of its members."""
        return max(int(c.params["context_length"]) for c in self.members.values())

    def forecast(self, bars: Any, draws: bool = False) -> Prediction:
        """Forecast the H bars after the last row of `bars` (a polars or pandas frame with columns ts
        (or a ts index), open, high, low, close, volume; naive timestamps are UTC)."""
        if not isinstance(bars, pl.DataFrame):
            bars = pl.from_pandas(bars if "ts" in bars.columns else bars.reset_index())
        c = self.config
        return self.forecast_series(bars_series(bars, c.symbol, c.freq, c.asset_class, "bars"), draws)

    def forecast_series(self, series: Series, draws: bool = False) -> Prediction:
        horizon = self.config.horizon
        origin = np.array([len(series)])
        ctx = contexts(series, origin, min(len(series), self.context_length))
        members: list[Forecast] = [
            from_draws(name, self.forecaster.draw(series, origin, horizon, c.backend, c.params, int(c.draws)), c.params)
            for name, c in self.members.items()
        ]
        if self.name == ENSEMBLE:
            samples, w, point, _ = mixture(members, self.weights)
        else:
            samples, w, point = members[0].samples, None, members[0].point
        q = metrics.quantiles(samples, w, presorted=w is None)[0]
        return Prediction(
            series.symbol,
            series.freq,
            self.name,
            series.ts[-1],
            ctx.future_ts(horizon)[0],
            point[0],
            {level: q[i] for i, level in enumerate(metrics.LEVELS)},
            samples[0] if draws else None,
            w if draws else None,
        )


def load_config(
    path: str | Path,
    ensemble: bool = False,
    backend: str | None = None,
    device: str = "auto",
    cache: str | Path | None = None,
    say: Callable[[str], None] | None = print_note,
) -> Predictor:
    """The predictor of a config written by `sweep run` or `sweep promote`: its chosen backend, or with
    `ensemble` its ensemble, or with `backend` that backend's best knobs in the config. A fine-tuned
    candidate forecasts with its recorded weights, re-fitted into `cache` (default `default_cache()`)
    when the run folder no longer holds them; `say` is told when that happens."""
    return Predictor(
        Config.from_json(Path(path)), ensemble, backend, device, None if cache is None else Path(cache), say
    )


def live_weights(
    config: Config,
    name: str,
    cache: Path | None = None,
    device: str = "auto",
    say: Callable[[str], None] | None = None,
) -> Path:
    """The fine-tuned weights a live forecast of backend `name` uses: those of the config's latest cut (the
    last test block; with walk-forward `ft_refit_every` the last block's), loaded from the run folder by
    key, else re-fitted into `cache` from the same bars of the config's lake, seed and knobs."""
    from sweeper.backends import backend_class

    entry = config.backends.get(name)
    source = None if entry is None else entry.source
    block = None if source is None else source.latest_block()
    if entry is None or entry.params is None or source is None or block is None:
        raise SweepError(f"config for {config.symbol}: {name} has fine-tuning knobs but no recorded weights")
    base = source.checkpoint or str(backend_class(name).default_checkpoint)
    series = load(resolve_lake(config.data.lake), list(block["symbols"]), config.freq)
    store = FinetuneStore(cache or default_cache())
    return recorded_checkpoint(block, name, base, series, entry.params, config.seed, store, device, say)


def promoted_config(out: Path, symbol: str, freq: str | None = None, horizon: int | None = None) -> Path:
    """The promoted config of a symbol in `out/hyperparams/best`; `freq` and `horizon` pick among several."""
    found = [
        (p, cfg)
        for p in Workspace(out).best_configs()
        if (cfg := Config.from_json(p)).symbol == symbol and freq in (None, cfg.freq) and horizon in (None, cfg.horizon)
    ]
    keys = [f"{cfg.freq} h{cfg.horizon}" for _, cfg in found]
    if not found:
        want = " ".join(x for x in (freq, None if horizon is None else f"h{horizon}") if x)
        raise SweepError(f"no promoted config for {symbol} {want}".rstrip() + f" in {out / 'hyperparams' / 'best'}")
    if len(found) > 1:
        raise SweepError(f"{symbol} has promoted configs for {', '.join(keys)}: choose one with --freq (and --horizon)")
    return found[0][0]


def forecast_latest(
    out: Path,
    symbols: list[str],
    freq: str | None = None,
    horizon: int | None = None,
    config: Path | None = None,
    lake: str | None = None,
    ensemble: bool = False,
    device: str = "auto",
) -> list[Prediction]:
    """Forecast the bars after each symbol's latest bar in the lake (the config's lake unless `lake`),
    from its promoted config, or from `config` for the symbol that config was made for."""
    predictions = []
    for symbol in symbols:
        predictor = load_config(config or promoted_config(out, symbol, freq, horizon), ensemble, device=device)
        c = predictor.config
        if c.symbol != symbol:
            raise SweepError(f"config {config} is for {c.symbol}, not {symbol}")
        series = load(resolve_lake(lake or c.data.lake), [symbol], c.freq)[0]
        predictions.append(predictor.forecast_series(series))
    return predictions
