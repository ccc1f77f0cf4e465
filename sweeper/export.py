"""A finished run, logged to MLflow, where many quant researchers keep their sweeps.

One MLflow run per symbol (tags: run, symbol, freq, horizon, metric, lake, chosen backend; the chosen
knobs as params; the chosen and ensemble validation and test means as metrics; the config, and the
report when `sweep report` wrote one, as artifacts), with one nested run per study (the study's best knobs
as params, their validation and test means as metrics, every trial's objective as a metric history by
trial number, the study's trials as a Parquet artifact). Everything comes from the run's own files
(configs, trials.parquet), so a run on any Optuna storage exports the same way. A run is exported once per
experiment: exporting it again is refused, so the experiment never holds it twice. With a local
`sqlite:///PATH` store the artifacts of an experiment this creates go to `mlartifacts/` beside PATH.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl

from sweeper.errors import SweepError
from sweeper.record import Config, Searched
from sweeper.workspace import RunPaths

EXPERIMENT = "sweep"
RUN_TAG = "sweep.run_id"
KIND_TAG = "sweep.kind"  # "symbol" or "study"
_PARENT = "mlflow.parentRunId"


def _metrics(prefix: str, means: dict[str, float | None] | None) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in (means or {}).items() if v is not None}


def _params(prefix: str, params: dict[str, Any] | None) -> dict[str, str]:
    return {f"{prefix}{k}": str(v) for k, v in (params or {}).items()}


def _log(
    client: Any,
    run_id: str,
    params: dict[str, str],
    metrics: dict[str, float],
    steps: list | None = None,
) -> None:
    """In batches, within MLflow's limits (100 params, 1,000 entries a call)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    points = [Metric(k, v, now, 0) for k, v in metrics.items()] + (steps or [])
    pairs = [Param(k, v) for k, v in params.items()]
    for lo in range(0, len(pairs), 100):
        client.log_batch(run_id, params=pairs[lo : lo + 100])
    for lo in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[lo : lo + 1000])


def _trial_history(trials: pl.DataFrame, metric: str) -> list:
    """Each completed trial's objective as one step of the metric `trial_<metric>`, by trial number."""
    from mlflow.entities import Metric

    done = trials.filter(pl.col("state") == "COMPLETE", pl.col("value").is_not_null()).sort("number")
    return [
        Metric(f"trial_{metric}", float(r["value"]), int(r["datetime_complete"].timestamp() * 1000), int(r["number"]))
        for r in done.iter_rows(named=True)
    ]


def export_mlflow(
    out: Path, run_id: str, tracking_uri: str | None = None, experiment: str = EXPERIMENT
) -> list[dict[str, str]]:
    """Log run `run_id` under `out` to MLflow; returns the MLflow runs made (name, kind, MLflow run id),
    each symbol's before its studies."""
    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    paths = RunPaths(out, run_id)
    manifest = paths.load_manifest()
    if manifest.get("status") != "complete":
        raise SweepError(f"run {run_id} is {manifest.get('status')}: finish it first (sweep run --resume {run_id})")
    configs = [Config.from_json(p) for p in sorted(paths.hyperparams.glob("*.json"))]
    trials = pl.read_parquet(paths.trials)
    client = MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri())
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found else client.create_experiment(experiment, _artifact_root(client))
    done = client.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'", max_results=1)
    if done:
        raise SweepError(
            f"run {run_id} is already in MLflow experiment {experiment!r} (MLflow run {done[0].info.run_id})"
        )
    created = []
    for cfg in configs:
        created += _export_symbol(client, exp_id, paths, cfg, trials.filter(pl.col("symbol") == cfg.symbol))
    return created


def _export_symbol(
    client: Any, exp_id: str, paths: RunPaths, cfg: Config, trials: pl.DataFrame
) -> list[dict[str, str]]:
    symbol, metric = cfg.symbol, cfg.selection_metric
    tags = {
        RUN_TAG: paths.run_id,
        "symbol": symbol,
        "freq": cfg.freq,
        "horizon": str(cfg.horizon),
        "metric": metric,
        "lake": cfg.data.lake,
    }
    chosen = cfg.chosen
    parent = client.create_run(
        exp_id,
        run_name=f"{paths.run_id}/{symbol}",
        tags={**tags, KIND_TAG: "symbol", "chosen": "none" if chosen is None else chosen.backend},
    )
    pid = parent.info.run_id
    ensemble = cfg.ensemble
    chosen_means = None if chosen is None else cfg.chosen_entry()
    _log(
        client,
        pid,
        {
            **_params("", None if chosen is None else chosen.params),
            **_params("ensemble_weight.", None if ensemble is None else ensemble.weights),
        },
        {
            **_metrics("val_", None if chosen_means is None else chosen_means.validation),
            **_metrics("test_", None if chosen_means is None else chosen_means.test),
            **_metrics("ensemble_val_", None if ensemble is None else ensemble.validation),
            **_metrics("ensemble_test_", None if ensemble is None else ensemble.test),
        },
    )
    client.log_artifact(pid, str(paths.config(symbol)))
    report = paths.report
    if report.is_file():
        client.log_artifact(pid, str(report))
    made = [{"name": parent.info.run_name, "kind": "symbol", "mlflow_run_id": pid}]
    for backend, entry in cfg.backends.items():
        study = trials.filter(pl.col("backend") == backend)
        run = client.create_run(
            exp_id,
            run_name=f"{paths.run_id}/{symbol}/{backend}",
            tags={**tags, KIND_TAG: "study", "backend": backend, _PARENT: pid, **_error(entry)},
        )
        params = {**_params("", entry.params), "trials": str(entry.trials)}
        if entry.source is not None and entry.source.checkpoint:
            params["checkpoint"] = entry.source.checkpoint
        means = {**_metrics("val_", entry.validation), **_metrics("test_", entry.test)}
        _log(client, run.info.run_id, params, means, _trial_history(study, metric))
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "trials.parquet"
            study.write_parquet(table)
            client.log_artifact(run.info.run_id, str(table))
        client.set_terminated(run.info.run_id, "FAILED" if entry.error else "FINISHED")
        made.append({"name": run.info.run_name, "kind": "study", "mlflow_run_id": run.info.run_id})
    client.set_terminated(pid, "FINISHED")
    return made


def _artifact_root(client: Any) -> str | None:
    """Artifacts of a local sqlite store go beside its database file (`mlartifacts/`), not into the folder
    the command happens to run in (MLflow's `./mlruns`); any other store keeps its own default."""
    uri = client.tracking_uri
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


def _error(entry: Searched) -> dict[str, str]:
    return {"error": entry.error[:5000]} if entry.error else {}
