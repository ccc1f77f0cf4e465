"""What a run's files hold: the manifest, the per-symbol config (schema below, SCHEMA_VERSION), the trial
and origin tables. Where they go is sweeper/workspace.py.

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
from sweeper.search import ERROR
from sweeper.select import SymbolResult
from sweeper.space import Space
from sweeper.workspace import recorded

if TYPE_CHECKING:
    from sweeper.sweep import RunRequest

SCHEMA_VERSION = 2  # 2: seasonal-naive MASE/MSIS scale, centred naive, ties, DM p-values, selection rule
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


def _clean(d: dict[str, float] | None) -> dict[str, float | None] | None:
    """JSON has no NaN: undefined means (e.g. MASE on a flat context) become null."""
    return None if d is None else {k: (v if np.isfinite(v) else None) for k, v in d.items()}


def _model_source(task: SymbolTask, backend: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """What re-creates a backend's draws: its checkpoint and the number of draws cached; `random_init` when
    the checkpoint is one `sweep models init` wrote; for fine-tuned knobs the weights behind each split
    (key, training cut, folder)."""
    checkpoint = task.forecaster.model(backend).checkpoint
    source = {
        "checkpoint": None if checkpoint is None else recorded(checkpoint),
        "draws": task.spaces[backend].max_samples,
        **({"random_init": True} if random_init(checkpoint) else {}),
    }
    if params is not None and FinetuneSettings.from_knobs(params).active:
        fc, tuner = task.forecaster, task.forecaster.tuner
        source["finetune"] = {
            "knobs": FinetuneSettings.from_knobs(params).knobs(),
            **{
                split: tuner.record(fc.finetune_jobs(task.series, task.plan, split, backend, params))
                for split in ("val", "test")
            },
        }
    return source


def random_weights(config: dict[str, Any]) -> list[str]:
    """The candidates of a config whose checkpoint has random weights (`sweep models init`)."""
    return [b for b, rec in config["backends"].items() if rec.get("random_init")]


def config_facts(config: dict[str, Any]) -> dict[str, Any]:
    """What a summary says of a symbol beyond its scores: the bar size used, and random weights."""
    return {"freq": config["freq"], "horizon": config["horizon"], "random_weights": random_weights(config)}


def config_record(
    run_id: str,
    task: SymbolTask,
    result: SymbolResult,
    req: RunRequest,
    lake: str,
    search: dict[str, Any],
    fronts: dict[str, list[dict]],
) -> dict:
    """The per-symbol config; `fronts` holds Pareto fronts by backend (multi-objective runs only)."""
    s = task.series
    metric, seed = req.metric, req.seed
    chosen = result.chosen_result()
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "symbol": s.symbol,
        "freq": s.freq,
        "asset_class": s.asset_class,
        "horizon": task.plan.protocol.horizon,
        "selection_metric": metric,
        "selection": {
            "rule": result.rule,
            "metric": metric,
            "why": result.why,
            "test": "Diebold-Mariano, AR-prewhitened EWC variance, t reference, 5% (sweeper/compare.py)",
        },
        "chosen": None
        if chosen is None
        else {"backend": chosen.backend, "params": chosen.params, **_model_source(task, chosen.backend, chosen.params)},
        "backends": {
            b: {
                "params": r.params,
                **({} if r.params is None else _model_source(task, b, r.params)),
                "trials": r.trials,
                "pruned_trials": r.pruned,
                "validation": _clean(r.val),
                "test": _clean(r.test),
                "trading": {split: _clean(x) for split, x in r.trading.items()},
                **({"pareto_front": fronts[b]} if b in fronts else {}),
                **({"error": r.error} if r.error else {}),
            }
            for b, r in result.backends.items()
        },
        "baseline": {
            "backend": result.baseline.backend,
            "source": result.baseline_source,
            "params": result.baseline.params,
            **_model_source(task, result.baseline.backend, result.baseline.params),
            "validation": _clean(result.baseline.val),
            "test": _clean(result.baseline.test),
            "trading": {split: _clean(x) for split, x in result.baseline.trading.items()},
        },
        "ensemble": None
        if result.ensemble is None
        else {
            "method": "greedy selection with replacement (Caruana et al. 2004) on validation CRPS",
            "weights": result.ensemble.weights,
            "validation": _clean(result.ensemble.val),
            "test": _clean(result.ensemble.test),
        },
        "comparisons": {
            name: {split: c.to_dict() for split, c in by_split.items()} for name, by_split in result.comparisons.items()
        },
        "protocol": task.plan.describe(s),
        "scale": {
            "what": "in-sample seasonal-naive MAE of the closes before the first validation origin (MASE, MSIS)",
            "season": task.season,
            "history_bars": int(task.plan.val[0]),
            "value": scale if np.isfinite(scale := task.scale()) else None,
        },
        "data": {
            "lake": lake,
            "source": s.source,
            "fingerprint": s.fingerprint,
            "plan_fingerprint": task.plan.fingerprint(),
            "rows": len(s),
            "first_ts": str(s.ts[0]),
            "last_ts": str(s.ts[-1]),
        },
        "search": search,
        "versions": versions(),
        "seed": seed,
    }


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
