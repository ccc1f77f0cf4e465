"""Re-scoring a written config on its recorded protocol and data: the regression check for CI.

A config records everything its numbers came from: lake, data fingerprint, protocol, backend, knobs,
checkpoint, the number of draws cached and the seed. Draws are seeded from those, so re-scoring on the
same data reproduces the recorded metrics; a difference beyond the tolerance is a regression.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sweeper.atomic import write_bytes, write_json
from sweeper.cache import ForecastCache
from sweeper.data import Series, load, resolve_lake
from sweeper.errors import SweepError
from sweeper.finetune.fit import FinetuneStore
from sweeper.finetune.tuner import Tuner
from sweeper.forecast import Forecaster
from sweeper.metric import REGISTRY, checked
from sweeper.objective import SymbolTask, mean_scores
from sweeper.output import Step
from sweeper.plan import Plan, Protocol, make_plan
from sweeper.record import SCHEMA_VERSION, Config
from sweeper.workspace import Workspace


def load_recorded(config: Config, lake: str | None = None) -> Series:
    """The config's series, refusing data that changed since it was recorded."""
    root = resolve_lake(lake or config.data.lake)
    series = load(root, [config.symbol], config.freq)[0]
    if series.fingerprint != config.data.fingerprint:
        raise SweepError(
            f"data changed: {config.symbol} {config.freq} in {root} has fingerprint {series.fingerprint}, "
            f"the config recorded {config.data.fingerprint}"
        )
    return series


def task_on(
    series: Series,
    protocol: Protocol,
    config: Config,
    device: str = "auto",
    cache: Path | None = None,
    plan: Plan | None = None,
) -> SymbolTask:
    """A task that scores `config`'s candidates on `series` under `protocol` (or on `plan`'s origins), with
    the config's seed and checkpoints (and a run's forecast cache when given)."""
    return SymbolTask(series, plan or make_plan(series, protocol), {}, config_forecaster(config, device, cache))


def config_forecaster(config: Config, device: str = "auto", cache: Path | None = None) -> Forecaster:
    """A forecaster with the config's seed and checkpoints: the draws its numbers came from."""
    store, extra = finetuned_of(config)
    tuner = Tuner(store, config.seed, device, extra)
    return Forecaster(ForecastCache(cache), config.seed, device, config.checkpoints(), tuner)


def finetuned_of(config: Config) -> tuple[FinetuneStore, list[Series]]:
    """Where a config's fine-tuned weights are (loaded by key when the folder is still there, else re-fitted
    into a temporary folder: same seed, same bars, same weights), and the other symbols they trained on."""
    blocks = [b for source in config.sources().values() for b in source.blocks()]
    root = next((Path(b["weights"]).parent for b in blocks if Path(b["weights"]).is_dir()), None)
    others = sorted({s for b in blocks for s in b["symbols"]} - {config.symbol})
    extra = load(resolve_lake(config.data.lake), others, config.freq) if others else []
    return FinetuneStore(root), extra


def recorded_task(
    config: Config, lake: str | None = None, device: str = "auto", cache: Path | None = None
) -> SymbolTask:
    """The task a config was scored on: its recorded data and protocol, refusing either if changed."""
    task = task_on(load_recorded(config, lake), config.protocol_record(), config, device, cache)
    if task.plan.fingerprint() != config.data.plan_fingerprint:
        raise SweepError(f"{config.symbol}: the recorded protocol no longer gives the recorded origins")
    return task


@dataclass
class Check:
    symbol: str
    recorded: dict[str, float | None] = field(default_factory=dict)
    now: dict[str, float] = field(default_factory=dict)
    regressions: list[str] = field(default_factory=list)
    error: str | None = None


def check_config(path: Path, tolerance: float, lake: str | None = None, device: str = "auto") -> Check:
    config = Config.from_json(path)
    check = Check(config.symbol)
    try:
        if config.schema_version < SCHEMA_VERSION:  # its recorded numbers mean something else
            raise SweepError(
                f"{check.symbol}: config schema {config.schema_version} was scored with other metric "
                f"definitions (schema {SCHEMA_VERSION}: seasonal MASE/MSIS scale, centred naive); re-run, promote"
            )
        task = recorded_task(config, lake, device)
        check.now = mean_scores(task.scores(config.chosen_candidate(), "test"))
    except SweepError as exc:
        check.error = str(exc)
        return check
    check.recorded = config.chosen_entry().test or {}
    check.regressions = [
        m.name
        for m in checked()
        if check.recorded.get(m.name) is not None
        and np.isfinite(check.now[m.name])
        and m.worse(check.recorded[m.name], check.now[m.name], tolerance)  # type: ignore[arg-type]
    ]
    return check


def rows(check: Check) -> list[tuple[str, float | None, float | None, str]]:
    """(metric, recorded, now, status) for every metric: each checked one ok or REGRESSION, latency shown."""
    out = []
    for m in REGISTRY.values():
        status = ("REGRESSION" if m.name in check.regressions else "ok") if m.reproducible else "not checked"
        out.append((m.name, check.recorded.get(m.name), check.now.get(m.name), status))
    return out


def markdown(checks: list[Check], tolerance: float) -> str:
    lines = [
        "# sweep eval",
        "",
        f"Promoted configs re-scored on their recorded test origins (tolerance {tolerance:.2%}).",
        "",
        "| symbol | metric | recorded | now | status |",
        "|---|---|---|---|---|",
    ]
    for c in checks:
        if c.error:
            lines.append(f"| {c.symbol} | - | - | - | ERROR: {c.error} |")
            continue
        for m, rec, now, status in rows(c):
            lines.append(f"| {c.symbol} | {m} | {_num(rec)} | {_num(now)} | {status} |")
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.6g}"


def run_eval(
    out: Path, tolerance: float, lake: str | None = None, device: str = "auto", step: Step | None = None
) -> tuple[list[Check], Path]:
    """Check every promoted config; write results/eval/<timestamp>.json and .md. `step(label, done, total)`
    is told after each config (a progress bar: a model's configs take seconds each)."""
    ws = Workspace(out)
    paths = ws.best_configs()
    if not paths:
        raise SweepError(f"nothing to evaluate: no promoted configs in {ws.best} (run `sweep promote RUN_ID` first)")
    checks = []
    for i, p in enumerate(paths):
        if step:
            step("eval", i, len(paths))
        checks.append(check_config(p, tolerance, lake, device))
    if step:
        step("eval", len(paths), len(paths))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    report = ws.eval_reports / f"{stamp}.json"
    write_json(
        report,
        {
            "created": stamp,
            "tolerance": tolerance,
            "checks": [
                {
                    "symbol": c.symbol,
                    "recorded": c.recorded,
                    "now": c.now,
                    "regressions": c.regressions,
                    "error": c.error,
                }
                for c in checks
            ],
        },
    )
    write_bytes(report.with_suffix(".md"), markdown(checks, tolerance).encode())
    return checks, report
