"""The runs in a results folder: what each one is, and removing a run's forecast cache.

`sweep runs` lists them by creation time from their own files (manifest, configs, trials table).
`sweep cache clean` frees the largest part of a finished run (its forecast cache, tens to hundreds of
MB) and keeps everything the run decided: configs, studies, tables. A later `report` or `eval`
recomputes the draws it needs, bit for bit (the cache key fixes the seed). A run whose recorded
process is still alive on this host is never cleaned under it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from sweeper.errors import SweepError
from sweeper.record import Config, Ensemble, Scored
from sweeper.search import owner_alive
from sweeper.select import ENSEMBLE, REFERENCE
from sweeper.workspace import RunPaths, Workspace


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    created: str
    status: str  # running (its process is alive), stopped (killed or interrupted), complete
    freq: str | None  # as asked, else what the configs chose (several when symbols differ)
    symbols: list[str]
    backends: list[str]
    trials: int | None  # trials recorded over all studies (None before the first table is written)
    duration_s: float | None  # created to finished
    winners: dict[str, str | None]
    cache_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seconds(start: str, end: str | None) -> float | None:
    return None if end is None else (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def is_running(manifest: dict[str, Any]) -> bool:
    """Recorded as running by a process that is still alive (another host's run counts as alive)."""
    owner = manifest.get("owner")  # runs recorded before owners were: no process to ask, taken as stopped
    return manifest.get("status") == "running" and owner is not None and owner_alive(owner)


def run_info(paths: RunPaths) -> RunInfo:
    m = paths.load_manifest()
    req = m["request"]
    configs = {s: Config.from_json(Path(p)) for s, p in m.get("configs", {}).items() if Path(p).is_file()}
    freqs = sorted({c.freq for c in configs.values()})
    trials = paths.trials
    status = m["status"]
    if status == "running" and not is_running(m):
        status = "stopped"
    return RunInfo(
        run_id=m["run_id"],
        created=m["created"],
        status=status,
        freq=req.get("freq") or (",".join(freqs) if freqs else None),
        symbols=list(req["symbols"]),
        backends=list(req["backends"]),
        trials=pl.scan_parquet(trials).select(pl.len()).collect().item() if trials.is_file() else None,
        duration_s=_seconds(m["created"], m.get("finished")),
        winners={s: c.winner for s, c in configs.items()},
        cache_bytes=folder_bytes(paths.cache),
    )


def list_runs(out: Path) -> list[RunInfo]:
    """Every run under out/results, oldest first."""
    found = [run_info(paths) for paths in Workspace(out).runs()]
    return sorted(found, key=lambda r: (r.created, r.run_id))


def clean_cache(paths: RunPaths) -> int:
    """Remove a run's forecast cache; returns the bytes freed. Refuses while the run's process lives.

    The folder is first renamed out of the way (one atomic step), so a reader sees the whole cache
    or none of it, and a crash mid-removal leaves only a hidden folder that the next clean removes.
    """
    manifest = paths.load_manifest()
    if is_running(manifest):
        raise SweepError(f"run {paths.run_id} is running ({manifest.get('owner')}); clean its cache after it stops")
    for leftover in paths.results.glob(".cache-removing-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if not paths.cache.is_dir():
        return 0
    size = folder_bytes(paths.cache)
    doomed = paths.results / f".cache-removing-{os.getpid()}"
    os.rename(paths.cache, doomed)
    shutil.rmtree(doomed)
    return size


def clean_caches(out: Path, run_id: str | None) -> list[dict[str, Any]]:
    """Clean one run's cache, or (run_id None) every run's that is not running; one record per run."""
    if run_id is not None:
        paths = RunPaths(out, run_id)
        return [{"run_id": run_id, "bytes": clean_cache(paths), "skipped": None}]
    records = []
    for info in list_runs(out):
        if info.status == "running":
            records.append({"run_id": info.run_id, "bytes": 0, "skipped": "running: left alone"})
        else:
            records.append({"run_id": info.run_id, "bytes": clean_cache(RunPaths(out, info.run_id)), "skipped": None})
    return records


def candidates(paths: RunPaths) -> list[dict[str, Any]]:
    """Every candidate of every symbol of a run (`sweep show`): best knobs, scores, ensemble weight."""
    configs = sorted(paths.hyperparams.glob("*.json"))
    if not configs:
        raise SweepError(f"run {paths.run_id} has no configs in {paths.hyperparams}")
    rows = []
    for path in configs:
        cfg = Config.from_json(path)
        metric = cfg.selection_metric
        weights = {} if cfg.ensemble is None else cfg.ensemble.weights
        entries: list[tuple[str, str, Any, str | None, bool, Scored | Ensemble, float | None]] = [
            (
                key,
                "naive (defaults)" if key == REFERENCE else key,
                b.params,
                getattr(b, "error", None),
                b.source is not None and b.source.random_init,
                b,
                weights.get(key),
            )
            for key, b in cfg.scored().items()
        ]
        if cfg.ensemble is not None:
            entries.append((ENSEMBLE, ENSEMBLE, None, None, False, cfg.ensemble, 1.0))
        for key, label, params, error, random_init, means, weight in entries:
            rows.append(
                {
                    "symbol": cfg.symbol,
                    "freq": cfg.freq,
                    "horizon": cfg.horizon,
                    "candidate": label,
                    "chosen": key == cfg.winner,
                    "params": params,
                    "error": error,
                    "random_init": random_init,
                    "metric": metric,
                    "validation": (means.validation or {}).get(metric),
                    "test": (means.test or {}).get(metric),
                    "weight": weight,
                }
            )
    return rows
