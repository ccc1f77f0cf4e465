"""The `sweep` command line. User errors print one line and exit 2; `--debug` shows the traceback."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sweeper.errors import SweepError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Inspect the lake and bring CSV files into it.")
models_app = typer.Typer(no_args_is_help=True, help="Local model checkpoints.")
train_app = typer.Typer(no_args_is_help=True, help="Train the project's own models.")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
# options that take several values after one flag: `--symbols BTCUSD ETHUSD`
LIST_OPTIONS = ("--symbols", "--backends", "--checkpoint", "--objectives")
_state = {"debug": False}
_METRIC_ALIASES = {"latency": "latency_s"}


def handled(fn: F) -> F:
    """Turn a SweepError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SweepError as exc:
            if _state["debug"]:
                raise
            err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    offline: bool = typer.Option(
        False, "--offline", help="Never reach the model hub: missing weights fail at once (HF_HUB_OFFLINE=1)."
    ),
) -> None:
    _state["debug"] = debug
    if offline:  # read by the backends when they load, so setting it here is early enough
        os.environ["HF_HUB_OFFLINE"] = "1"


def expand_list_options(argv: list[str]) -> list[str]:
    """Rewrite `--symbols A B --x` as `--symbols A --symbols B --x` (also accepts A,B)."""
    out: list[str] = []
    current: str | None = None
    for arg in argv:
        if arg.startswith("-"):
            current = arg if arg in LIST_OPTIONS else None
            if current is None:
                out.append(arg)
            continue
        if current is not None:
            out.extend(x for v in arg.split(",") if v for x in (current, v))
        else:
            out.append(arg)
    return out


def main() -> None:
    app(args=expand_list_options(sys.argv[1:]), prog_name="sweep")


# --- sweep run --------------------------------------------------------------------------------------


def _parse_checkpoints(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SweepError(f"invalid --checkpoint {item!r}: use BACKEND=PATH_OR_HUB_ID")
        out[name] = path
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


def _summary_rows(results: list[Any], metric: str) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        chosen = r.backends.get(r.chosen) if r.chosen else None
        vs = r.comparisons.get("chosen_vs_naive", {})
        test_cmp = vs.get("test")
        skill = None
        if test_cmp is not None and test_cmp.mean_b and r.chosen != "naive":
            skill = -test_cmp.diff / test_cmp.mean_b
        ens = r.comparisons.get("ensemble_vs_chosen", {})
        rows.append(
            {
                "symbol": r.symbol,
                "chosen": r.chosen,
                "params": chosen.params if chosen else None,
                "validation": chosen.val if chosen else None,
                "test": chosen.test if chosen else None,
                "naive": {"validation": r.baseline.val, "test": r.baseline.test, "source": r.baseline_source},
                "test_skill_vs_naive": skill,
                "vs_naive": {s: c.to_dict() for s, c in vs.items()},
                "ensemble": None
                if r.ensemble is None
                else {
                    "weights": r.ensemble.weights,
                    "validation": r.ensemble.val,
                    "test": r.ensemble.test,
                    "vs_chosen": {s: c.to_dict() for s, c in ens.items()},
                },
                "skipped": {b: x.error for b, x in r.backends.items() if x.error},
            }
        )
    return rows


def _console() -> Console:
    """Stdout console; wide when piped, so tables in logs are not wrapped at 80 columns."""
    con = Console()
    return con if con.is_terminal else Console(width=160)


def _vs(cmp: dict[str, Any] | None, relative: float | None) -> str:
    """'+3.1%' with '(within noise)' when the bootstrap interval holds zero."""
    if not cmp or relative is None:
        return "-"
    return f"{relative:+.1%}" + (" (within noise)" if cmp["within_noise"] else "")


def _print_summary(rows: list[dict[str, Any]], metric: str, run_id: str, out: Path) -> None:
    con = _console()
    table = Table(title=f"sweep run {run_id}", title_justify="left")
    cols = (
        "symbol",
        "best",
        f"val {metric}",
        f"test {metric}",
        "val MAE",
        "test MAE",
        "test skill vs naive",
        f"ensemble test {metric} vs best",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("symbol", "best") else "right")
    for row in rows:
        val, test = row["validation"] or {}, row["test"] or {}
        skill = _vs(row["vs_naive"].get("test"), row["test_skill_vs_naive"])
        if row["chosen"] == "naive":
            skill = "best is naive"
        ens_col = "-"
        if row["ensemble"] and row["ensemble"]["vs_chosen"].get("test"):
            cmp = row["ensemble"]["vs_chosen"]["test"]
            rel = cmp["diff"] / cmp["mean_b"] if cmp["mean_b"] else None
            ens_col = f"{_fmt(cmp['mean_a'])}, {_vs(cmp, rel)}"
        table.add_row(
            row["symbol"],
            row["chosen"] or "none",
            _fmt(val.get(metric)),
            _fmt(test.get(metric)),
            _fmt(val.get("mae")),
            _fmt(test.get("mae")),
            skill,
            ens_col,
        )
    con.print(table)
    for row in rows:
        for b, why in row["skipped"].items():
            con.print(f"[yellow]{row['symbol']}: skipped {b}:[/yellow] {why}", highlight=False)
    con.print(f"configs: {out / 'hyperparams' / run_id}   results: {out / 'results' / run_id}", highlight=False)


@app.command()
@handled
def run(
    symbols: list[str] = typer.Option(None, "--symbols", help="Symbols to sweep, e.g. --symbols BTCUSD ETHUSD."),
    lake: str = typer.Option(None, help="Lake root (default: $SWEEP_LAKE, else the demo lake)."),
    freq: str = typer.Option(None, help="Bar size, e.g. 1h (default: finest available for every symbol)."),
    backends: list[str] = typer.Option(None, "--backends", help="Backends to search (default: the baselines)."),
    trials: int = typer.Option(None, help="Trials per symbol and backend (default 50)."),
    timeout: float = typer.Option(None, help="Seconds per symbol and backend study."),
    metric: str = typer.Option(None, help="Selection metric (default crps)."),
    horizon: int = typer.Option(None, help="Bars ahead to forecast (default 1)."),
    val_origins: int = typer.Option(None, help="Validation origins (default: up to 500)."),
    test_origins: int = typer.Option(None, help="Test origins (default: up to 200)."),
    stride: int = typer.Option(None, help="Bars between consecutive origins (default 1)."),
    seed: int = typer.Option(None, help="Seed of samplers and model draws (default 0)."),
    checkpoint: list[str] = typer.Option(None, "--checkpoint", help="BACKEND=PATH or hub id; repeatable."),
    device: str = typer.Option(None, help="auto, cpu or cuda (default auto)."),
    spaces: str = typer.Option(None, help="Folder of search-space YAML files (default: search_spaces/)."),
    storage: str = typer.Option(
        None,
        help="Optuna storage: a URL (sqlite://, postgresql://), or journal (a journal file in the run "
        "folder, less overhead per trial). Default: SQLite in the run folder.",
    ),
    objectives: list[str] = typer.Option(
        None, "--objectives", help="Several metrics for a Pareto search (NSGA-II), e.g. crps latency."
    ),
    latency_budget: float = typer.Option(
        None, "--latency-budget", help="Seconds per origin: pick the most accurate config within it."
    ),
    engine: str = typer.Option(None, help="optuna (default) or ray (Ray Tune, OptunaSearch + ASHA)."),
    jobs: int = typer.Option(None, help="Optuna processes sharing every study on this machine (default 1)."),
    workers: int = typer.Option(None, help="Ray: trials at once (default: every CPU of the cluster)."),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray: auto or HOST:PORT (default: start one here)."),
    gpus_per_trial: float = typer.Option(None, "--gpus-per-trial", help="Ray: GPUs per trial (default 0)."),
    out: Path = typer.Option(Path("."), help="Where results/ and hyperparams/ go."),
    run_id: str = typer.Option(None, "--run-id", help="Name of the run (default: timestamp)."),
    resume: str = typer.Option(None, "--resume", help="Continue the stopped run RUN_ID."),
    json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
) -> None:
    """Search every backend for every symbol; write per-symbol configs and result tables."""
    from sweeper.store import RunPaths, new_run_id
    from sweeper.sweep import RunRequest, resume_request
    from sweeper.sweep import run as run_sweep

    given = {
        "symbols": symbols,
        "lake": lake,
        "freq": freq,
        "backends": backends,
        "metric": metric,
        "horizon": horizon,
        "val_origins": val_origins,
        "test_origins": test_origins,
        "stride": stride,
        "seed": seed,
        "checkpoints": _parse_checkpoints(checkpoint) or None,
        "device": device,
        "spaces_dir": spaces,
        "storage": storage,
        "objectives": [_METRIC_ALIASES.get(o, o) for o in objectives] if objectives else None,
        "latency_budget": latency_budget,
        "engine": engine,
        "jobs": jobs,
        "workers": workers,
        "ray_address": ray_address,
        "gpus_per_trial": gpus_per_trial,
    }
    if objectives and not metric:
        given["metric"] = given["objectives"][0]
    if resume:
        extra = [k for k, v in given.items() if v]
        if extra or run_id:
            raise SweepError(
                f"--resume repeats the recorded settings; only --trials, --timeout and --out may be given "
                f"(got {', '.join(extra + (['run_id'] if run_id else []))})"
            )
        paths = RunPaths(out, resume)
        req = resume_request(paths, trials, timeout)
    else:
        paths = RunPaths(out, run_id or new_run_id())
        values = {k: v for k, v in {**given, "trials": trials, "timeout": timeout}.items() if v is not None}
        req = RunRequest(**values)
    console = err if json else _console()
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and json,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        try:
            results = run_sweep(req, paths, progress, resume=bool(resume))
        except KeyboardInterrupt:
            bar.stop()
            err.print(f"interrupted: continue with `sweep run --resume {paths.run_id}`", highlight=False)
            raise typer.Exit(130) from None
    rows = _summary_rows(results, req.metric)
    if json:
        doc = {"run_id": paths.run_id, "metric": req.metric, "symbols": rows, "results": str(paths.results)}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    else:
        _print_summary(rows, req.metric, paths.run_id, out)


# --- sweep data ---------------------------------------------------------------------------------------


@data_app.command("check")
@handled
def data_check(
    symbols: list[str] = typer.Option(..., "--symbols", help="Symbols to check."),
    lake: str = typer.Option(None, help="Lake root (default: $SWEEP_LAKE, else the demo lake)."),
    freq: str = typer.Option(None, help="Bar size (default: finest available for every symbol)."),
) -> None:
    """Rows, first/last bar, gaps and broken rules per symbol; exit 1 when any rule is broken."""
    from sweeper.data import locate, read_series, resolve_lake

    root = resolve_lake(lake)
    table = Table(title=f"lake {root}", title_justify="left")
    for col in ("symbol", "freq", "rows", "first bar", "last bar", "gaps", "longest gap", "zero-volume", "problems"):
        table.add_column(col)
    failed = False
    for ref in locate(root, symbols, freq):
        try:
            s = read_series(ref)
        except SweepError as exc:
            failed = True
            table.add_row(ref.symbol, ref.freq, "-", "-", "-", "-", "-", "-", f"[red]{exc}[/red]")
            continue
        g = s.gaps()
        table.add_row(
            s.symbol,
            s.freq,
            f"{len(s):,}",
            str(s.ts[0])[:19],
            str(s.ts[-1])[:19],
            f"{g.count} ({g.missing_bars} bars)",
            _duration(g.longest_seconds),
            str(int((s.ohlcv[:, 4] == 0).sum())),
            "none",
        )
    _console().print(table)
    if failed:
        raise typer.Exit(1)


def _duration(seconds: int) -> str:
    if seconds == 0:
        return "-"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days}d " if days else "") + f"{hours}h{rest // 60:02d}m"


@data_app.command("import")
@handled
def data_import(
    file: Path = typer.Argument(..., help="CSV of bars (timestamp/date/ts, open, high, low, close, volume)."),
    symbol: str = typer.Option(..., help="Symbol name in the lake."),
    freq: str = typer.Option(..., help="Bar size, e.g. 1h or 1d."),
    asset_class: str = typer.Option(..., "--asset-class", help="crypto, equity, fx, commodity, ..."),
    lake: str = typer.Option(None, help="Lake root to write into (default: $SWEEP_LAKE)."),
) -> None:
    """Write a CSV of bars into the lake layout, after checking every row."""
    from sweeper.data import import_csv

    target = lake or os.environ.get("SWEEP_LAKE")
    if not target:
        raise SweepError("import needs a lake to write into: pass --lake PATH or set $SWEEP_LAKE")
    rows, files = import_csv(file, Path(target), symbol, freq, asset_class)
    _console().print(f"imported {rows:,} bars of {symbol} {freq} into {target} ({files} monthly files)")


# --- sweep models ---------------------------------------------------------------------------------------


@models_app.command("init")
@handled
def models_init(
    backend: str = typer.Argument(..., help="Backend whose checkpoint format to write."),
    preset: str = typer.Option("tiny", help="tiny, or small (the published small model's shapes)."),
    out: Path = typer.Option(..., help="Directory to write the checkpoint into."),
) -> None:
    """Write a randomly initialised checkpoint in the backend's real on-disk format (no weights needed)."""
    from sweeper.backends import backend_class

    path = backend_class(backend).init_checkpoint(preset, out)
    _console().print(f"wrote a randomly initialised {backend} checkpoint ({preset}) to {path}")


# --- sweep promote / eval / runs / show -------------------------------------------------------------------


@app.command()
@handled
def promote(
    run_id: str = typer.Argument(..., help="Run whose winners to promote."),
    symbols: list[str] = typer.Option(None, "--symbols", help="Only these symbols (default: all of the run)."),
    force: bool = typer.Option(False, help="Promote even when not better beyond noise."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; write nothing."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/ and results/."),
    lake: str = typer.Option(None, help="Lake to re-score on (default: the one each config recorded)."),
) -> None:
    """Copy a run's winners to hyperparams/best/ when they beat the current best beyond noise."""
    from sweeper.promote import promote as do_promote

    decisions = do_promote(out, run_id, symbols, force, dry_run, lake)
    table = Table(title=f"promote {run_id}" + (" (dry run: nothing written)" if dry_run else ""), title_justify="left")
    for col in ("symbol", "action", "why"):
        table.add_column(col)
    for d in decisions:
        action = ("would promote" if dry_run else "promoted") if d.promote else "refused"
        table.add_row(d.symbol, action, d.reason)
    _console().print(table)


@app.command("eval")
@handled
def eval_(
    check: bool = typer.Option(False, help="Exit 1 when any metric is worse than recorded beyond tolerance."),
    tolerance: float = typer.Option(0.01, help="Allowed relative worsening (0.01 = 1%)."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/best/ and results/."),
    lake: str = typer.Option(None, help="Lake to read (default: the one each config recorded)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Re-evaluate every promoted config on its recorded protocol and data (for CI)."""
    from sweeper.evaluate import run_eval

    if tolerance < 0:
        raise SweepError(f"--tolerance must be >= 0, got {tolerance}")
    checks, report = run_eval(out, tolerance, lake, device)
    table = Table(title="sweep eval: recorded vs now (test origins)", title_justify="left")
    for col in ("symbol", "metric", "recorded", "now", "status"):
        table.add_column(col)
    for c in checks:
        if c.error:
            table.add_row(c.symbol, "-", "-", "-", f"[red]error: {c.error}[/red]")
            continue
        for m in ("crps", "mae", "pct_return_mae", "directional_accuracy"):
            status = "[red]REGRESSION[/red]" if m in c.regressions else "ok"
            table.add_row(c.symbol, m, _fmt(c.recorded.get(m), 6), _fmt(c.now.get(m), 6), status)
    con = _console()
    con.print(table)
    con.print(f"report: {report} and {report.with_suffix('.md')}", highlight=False)
    errors = [c for c in checks if c.error]
    if errors:
        err.print(f"[red]error:[/red] {len(errors)} config(s) could not be evaluated", highlight=False)
        raise typer.Exit(2)
    if check and any(c.regressions for c in checks):
        raise typer.Exit(1)


@app.command()
@handled
def runs(out: Path = typer.Option(Path("."), help="Folder holding results/.")) -> None:
    """List runs and their winners."""
    from sweeper.atomic import read_json

    table = Table(title=f"runs in {out / 'results'}", title_justify="left")
    for col in ("run", "created", "status", "symbols", "winners"):
        table.add_column(col)
    for manifest in sorted((out / "results").glob("*/manifest.json")):
        m = read_json(manifest)
        winners = []
        for sym, path in m.get("configs", {}).items():
            cfg = read_json(Path(path)) if Path(path).is_file() else {}
            winners.append(f"{sym}:{(cfg.get('chosen') or {}).get('backend', '-')}")
        table.add_row(m["run_id"], m["created"], m["status"], " ".join(m["request"]["symbols"]), " ".join(winners))
    _console().print(table)


@app.command()
@handled
def show(
    run_id: str = typer.Argument(..., help="Run to show."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/ and results/."),
) -> None:
    """Per symbol: every backend's best validation and test scores, the ensemble and the naive floor."""
    from sweeper.errors import check_name
    from sweeper.evaluate import read_config

    folder = out / "hyperparams" / check_name("run id", run_id)
    configs = sorted(folder.glob("*.json"))
    if not configs:
        raise SweepError(f"run {run_id} has no configs in {folder}")
    con = _console()
    for path in configs:
        cfg = read_config(path)
        metric = cfg["selection_metric"]
        table = Table(title=f"{cfg['symbol']} {cfg['freq']} H={cfg['horizon']}", title_justify="left")
        for col in ("candidate", "params", f"val {metric}", f"test {metric}", "weight"):
            table.add_column(col)
        weights = (cfg.get("ensemble") or {}).get("weights", {})
        chosen = (cfg.get("chosen") or {}).get("backend")
        for name, b in cfg["backends"].items():
            mark = " *" if name == chosen else ""
            table.add_row(
                name + mark,
                str(b.get("params") or b.get("error", "")),
                _fmt((b.get("validation") or {}).get(metric)),
                _fmt((b.get("test") or {}).get(metric)),
                _fmt(weights.get(name), 3),
            )
        if cfg["baseline"]["source"] == "defaults":
            base = cfg["baseline"]
            table.add_row(
                "naive (defaults)",
                str(base["params"]),
                _fmt(base["validation"][metric]),
                _fmt(base["test"][metric]),
                _fmt(weights.get("baseline"), 3),
            )
        if cfg.get("ensemble"):
            e = cfg["ensemble"]
            table.add_row("ensemble", "", _fmt(e["validation"][metric]), _fmt(e["test"][metric]), "1")
        con.print(table)


# --- sweep report ---------------------------------------------------------------------------------------


@app.command()
@handled
def report(
    run_id: str = typer.Argument(..., help="Run to report on."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/ and results/."),
    lake: str = typer.Option(None, help="Lake for the forecast fans (default: the one each config recorded)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda, for model backends."),
) -> None:
    """Write results/RUN_ID/report.html: forecast fans, search history, importances, score distributions."""
    from sweeper.report import write_report

    path = write_report(out, run_id, lake, device)
    _console().print(f"report: {path}", highlight=False)


# --- sweep train ---------------------------------------------------------------------------------------


@train_app.command("marketgpt")
@handled
def train_marketgpt(
    symbols: list[str] = typer.Option(..., "--symbols", help="Symbols to train on together."),
    freq: str | None = typer.Option(None, "--freq", help="Bar frequency (default: finest common one)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes), small, base (GPU)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Total optimiser steps (preset default)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop this call after M minutes."),
    lake: Path | None = typer.Option(None, "--lake", help="Candle lake (default $SWEEP_LAKE, else the demo)."),
    name: str | None = typer.Option(None, "--name", help="Checkpoint name under models/marketgpt/."),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint of --name."),
    horizon: int = typer.Option(1, "--horizon", help="The sweep's horizon: training stops before its origins."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="Bins per OHLC component (preset: 1024)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", help="CPU threads (0: torch's default; 1 suits a shared box)."),
) -> None:
    """Train MarketGPT on bars before the sweep's first validation origin; writes models/marketgpt/NAME."""
    from sweeper.errors import check_name
    from sweeper.marketgpt.train import DEFAULT_ROOT, train
    from sweeper.plan import Protocol

    out = None if name is None else DEFAULT_ROOT / check_name("model name", name)
    summary = train(
        [w for item in symbols for w in item.split(",") if w],
        freq,
        lake,
        preset,
        out,
        max_steps,
        max_minutes,
        resume=resume,
        protocol=Protocol(horizon=horizon),
        vocab_size=vocab_size,
        device=device,
        seed=seed,
        threads=threads or None,
    )
    first = "-" if summary.first_loss is None else f"{summary.first_loss:.4f}"
    last = "-" if summary.last_loss is None else f"{summary.last_loss:.4f}"
    _console().print(
        f"wrote {summary.out_dir}: {summary.steps_run} steps this run ({summary.steps} in all) on {summary.device}, "
        f"loss {first} -> {last}, {summary.minutes:.1f} min (bins {summary.tokenizer_seconds:.0f} s); "
        f"trained on bars up to {summary.trained_until}",
        highlight=False,
    )
