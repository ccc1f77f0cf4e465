"""What a run's files hold: the per-symbol config built from the results (its record is sweeper/record.py),
the trial and origin tables. Where they go is sweeper/workspace.py.

Every file is written atomically.
"""

from __future__ import annotations

import datetime as dt
import platform
import secrets
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import polars as pl
from optuna.trial import TrialState

from sweeper import __version__
from sweeper.atomic import write_with
from sweeper.backends import random_init
from sweeper.finetune.settings import FinetuneSettings
from sweeper.metrics import LEVELS
from sweeper.objective import SymbolTask, recorded_means
from sweeper.record import Baseline, Chosen, Config, Data, Ensemble, Means, Searched, Source, clean
from sweeper.search import ERROR
from sweeper.select import SymbolResult
from sweeper.space import Space
from sweeper.workspace import recorded

if TYPE_CHECKING:
    from sweeper.sweep import RunRequest

_PACKAGES = ("numpy", "polars", "optuna", "scoringrules", "torch", "uni2ts", "toto-ts", "kronos-model-arch")


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def versions() -> dict[str, str]:
    found = {"sweeper": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _source(task: SymbolTask, backend: str, params: dict[str, Any]) -> Source:
    """What re-creates a backend's draws (`record.Source`); for fine-tuned knobs the weights behind each
    split."""
    checkpoint = task.forecaster.model(backend).checkpoint
    finetune, settings = None, FinetuneSettings.from_knobs(params)
    if settings.active:
        fc, tuner = task.forecaster, task.forecaster.tuner
        finetune = {
            "knobs": settings.knobs(),
            **{
                split: tuner.record(fc.finetune_jobs(task.series, task.plan, split, backend, params))
                for split in ("val", "test")
            },
        }
    return Source(
        None if checkpoint is None else recorded(checkpoint),
        task.spaces[backend].max_samples,
        random_init(checkpoint),
        finetune,
    )


def _trading(trading: dict[str, dict[str, float]]) -> dict[str, Means | None]:
    return {split: clean(x) for split, x in trading.items()}


def config_record(
    run_id: str,
    task: SymbolTask,
    result: SymbolResult,
    req: RunRequest,
    lake: str,
    search: dict[str, Any],
    fronts: dict[str, list[dict]],
) -> Config:
    """The per-symbol config; `fronts` holds Pareto fronts by backend (multi-objective runs only)."""
    s = task.series
    chosen = result.chosen_result()
    base = result.baseline
    return Config(
        run_id=run_id,
        symbol=s.symbol,
        freq=s.freq,
        asset_class=s.asset_class,
        horizon=task.plan.protocol.horizon,
        selection_metric=req.metric,
        selection={
            "rule": result.rule,
            "metric": req.metric,
            "why": result.why,
            "test": "Diebold-Mariano, AR-prewhitened EWC variance, t reference, 5% (sweeper/compare.py)",
        },
        chosen=None
        if chosen is None
        else Chosen(chosen.backend, chosen.params, _source(task, chosen.backend, chosen.params)),
        backends={
            b: Searched(
                clean(r.val),
                clean(r.test),
                _trading(r.trading),
                r.params,
                None if r.params is None else _source(task, b, r.params),
                r.trials,
                r.pruned,
                fronts.get(b),
                r.error or None,
            )
            for b, r in result.backends.items()
        },
        baseline=Baseline(
            clean(base.val),
            clean(base.test),
            _trading(base.trading),
            base.backend,
            result.baseline_source,
            base.params,
            _source(task, base.backend, base.params),
        ),
        ensemble=None
        if result.ensemble is None
        else Ensemble(
            "greedy selection with replacement (Caruana et al. 2004) on validation CRPS",
            result.ensemble.weights,
            clean(result.ensemble.val),
            clean(result.ensemble.test),
        ),
        comparisons={
            name: {split: c.to_dict() for split, c in by_split.items()} for name, by_split in result.comparisons.items()
        },
        protocol=task.plan.describe(s),
        scale={
            "what": "in-sample seasonal-naive MAE of the closes before the first validation origin (MASE, MSIS)",
            "season": task.season,
            "history_bars": int(task.plan.val[0]),
            "value": scale if np.isfinite(scale := task.scale()) else None,
        },
        data=Data(lake, s.source, s.fingerprint, task.plan.fingerprint(), len(s), str(s.ts[0]), str(s.ts[-1])),
        search=search,
        versions=versions(),
        seed=req.seed,
    )


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    """Optuna records naive local times; as UTC."""
    return None if t is None else t.astimezone(dt.UTC)


_DTYPES = {int: pl.Int64, float: pl.Float64, bool: pl.Boolean, str: pl.String}


def trials_frame(symbol: str, backend: str, study: optuna.Study, space: Space) -> pl.DataFrame:
    """Every trial of a study, as Optuna's `trials_dataframe` lays it out: one typed `params_<knob>` column
    per knob (real values), state, times, duration, the step a pruned trial stopped at, validation means."""
    trials = study.get_trials(deepcopy=False)
    rows = [
        {
            "symbol": symbol,
            "backend": backend,
            "number": t.number,
            "state": t.state.name,
            "value": t.values[0] if t.values else None,  # the first objective; all are in the val_ columns
            "datetime_start": _utc(t.datetime_start),
            "datetime_complete": _utc(t.datetime_complete),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "prune_step": t.last_step if t.state == TrialState.PRUNED else None,
            "error": t.user_attrs.get(ERROR),
            **{f"val_{k}": v for k, v in recorded_means(t).items()},
        }
        for t in trials
    ]
    utc = pl.Datetime("us", "UTC")
    frame = pl.DataFrame(rows, infer_schema_length=None).with_columns(
        pl.col("datetime_start", "datetime_complete").cast(utc)
    )
    knobs = [space.values(t.params) for t in trials]
    return frame.with_columns(
        pl.Series(
            f"params_{name}",
            [None if name not in k else p.dtype(k[name]) for k in knobs],
            dtype=_DTYPES[p.dtype],
        )
        for name, p in space.params.items()
    ).with_columns(pl.col("prune_step").cast(pl.Int64))


def level_column(q: float) -> str:
    """q05, q10, ..., q95: the column of a quantile level."""
    return f"q{round(q * 100):02d}"


def origins_frame(task: SymbolTask, result: SymbolResult) -> pl.DataFrame:
    """One row per origin and candidate: metrics, and what was scored. Timestamps are UTC; target_ts,
    actual, point and each quantile are lists of the H forecast bars."""
    h = task.plan.protocol.horizon
    utc = pl.Datetime("us", "UTC")
    frames = []
    for (cand, split), scores in result.per_origin.items():
        idx = task.plan.origins(split)
        band = result.bands[(cand, split)]
        steps = idx[:, None] + np.arange(h)
        frames.append(
            pl.DataFrame(
                {
                    "symbol": task.series.symbol,
                    "candidate": cand,
                    "split": split,
                    "origin_row": idx,
                    "origin_ts": pl.Series(task.series.ts[idx]).dt.replace_time_zone("UTC"),
                    **{k: np.asarray(v, dtype=np.float64) for k, v in scores.items()},
                    "target_ts": pl.Series(list(task.series.ts[steps]), dtype=pl.List(pl.Datetime("us"))),
                    "actual": list(task.truth(split).y),
                    "point": list(band.point),
                    **{level_column(q): list(band.quantiles[:, i]) for i, q in enumerate(LEVELS)},
                }
            ).with_columns(
                pl.col("target_ts").cast(pl.List(utc)),
                pl.col("actual", "point", *map(level_column, LEVELS)).cast(pl.List(pl.Float64)),
            )
        )
    return pl.concat(frames)


def write_parquet(path: Path, frame: pl.DataFrame) -> None:
    write_with(path, lambda p: frame.write_parquet(p))
