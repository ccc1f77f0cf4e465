"""The `sweep` command line. User errors print one line and exit 2; `--debug` shows the traceback.

Conventions of Typer/Rich tools: `-h`/`--help`, `--version`, `--json` on every command that prints a
table (one formatter, `sweeper/output.py`), progress with elapsed time and ETA on slow steps.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from sweeper import __version__
from sweeper.errors import SweepError, machine_fault
from sweeper.output import Column, Listing, fmt, progress, stderr_console, stdout_console

if TYPE_CHECKING:
    from sweeper.evaluate import Check
    from sweeper.workspace import RunPaths

EXIT_CODES = (
    "Exit codes: 0 done; 1 a check failed (eval --check, data check) or the machine stopped the command "
    "(disk full, out of memory: one line); 2 bad input or usage (one line on stderr, nothing written); "
    "130 interrupted by Ctrl-C, 143 by SIGTERM (sweep run --resume RUN_ID continues)."
)
_CONTEXT = {"help_option_names": ["-h", "--help"]}


class _FlagHelp:
    """`-h, --help` listed as a flag, like every other boolean option (Typer shows it as `<bool>`)."""

    def get_help_option(self, ctx: Any) -> Any:
        opt = super().get_help_option(ctx)  # type: ignore[misc]
        if opt is not None:
            opt.metavar = ""
        return opt


class Command(_FlagHelp, typer.core.TyperCommand):
    pass


class Group(_FlagHelp, typer.core.TyperGroup):
    pass


class OneLineErrors(Group):
    """The root group: usage errors (a wrong option type, a missing option, an unknown command) are one
    line and exit 2, like every other bad input, instead of Typer's framed usage box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # Typer's own Click: UsageError, BadParameter, NoSuchOption ...
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `sweep` or `sweep data`: the help
                exc.show()  # type: ignore[attr-defined]
                sys.exit(0)
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            _one_line(f"{where}{exc.format_message()}{hint}")
            sys.exit(exc.exit_code)  # 2 for every usage error
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="sweep",
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    context_settings=_CONTEXT,
    epilog=EXIT_CODES,
    cls=OneLineErrors,
)
data_app = typer.Typer(
    no_args_is_help=True, help="Inspect the lake and bring CSV files into it.", epilog=EXIT_CODES, cls=Group
)
models_app = typer.Typer(no_args_is_help=True, help="Local model checkpoints.", epilog=EXIT_CODES, cls=Group)
train_app = typer.Typer(no_args_is_help=True, help="Train the project's own models.", epilog=EXIT_CODES, cls=Group)
cache_app = typer.Typer(no_args_is_help=True, help="A run's forecast cache.", epilog=EXIT_CODES, cls=Group)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
app.add_typer(cache_app, name="cache")
export_app = typer.Typer(
    no_args_is_help=True, help="Log runs to the tools researchers keep their sweeps in.", epilog=EXIT_CODES, cls=Group
)
app.add_typer(export_app, name="export")

err = stderr_console()
F = TypeVar("F", bound=Callable[..., Any])
# options that take several values after one flag: `--symbols BTCUSD ETHUSD`
LIST_OPTIONS = ("--symbols", "--backends", "--checkpoint", "--objectives", "--finetune-on", "--set")
_state = {"debug": False}
_METRIC_ALIASES = {"latency": "latency_s"}


def _one_line(text: str) -> None:
    err.print(f"[red]error:[/red] {' '.join(text.split())}", markup=True, highlight=False, soft_wrap=True)


def handled(fn: F) -> F:
    """Turn a SweepError into one line on stderr and exit code 2, a machine fault into one line and 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SweepError as exc:
            if _state["debug"]:
                raise
            _one_line(str(exc))
            raise typer.Exit(2) from None
        except Exception as exc:
            cause = machine_fault(exc)
            if cause is None or _state["debug"]:
                raise
            _one_line(f"the machine stopped this command: {type(cause).__name__}: {cause}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def flag(name: str, help: str) -> Any:
    """A boolean option shown as a flag (`--json`), not as `--json/--no-json <bool>`."""
    return typer.Option(False, name, help=help, metavar="")


def json_flag() -> Any:
    return flag("--json", "Print the table as JSON on stdout (progress, if any, goes to stderr).")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sweep {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = flag("--debug", "Show tracebacks for errors."),
    offline: bool = flag("--offline", "Never reach the model hub: missing weights fail at once (HF_HUB_OFFLINE=1)."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit.", metavar=""
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
    from sweeper.workspace import recorded

    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SweepError(f"invalid --checkpoint {item!r}: use BACKEND=PATH_OR_HUB_ID")
        out[name] = recorded(path)  # a local folder recorded absolute: --resume and readers work from anywhere
    return out


def _vs(cmp: dict[str, Any] | None, relative: float | None) -> str:
    """'+3.1%' (positive: better) with '(within noise)' when the DM test does not reject equal skill."""
    if not cmp or relative is None:
        return "-"
    return f"{relative:+.1%}" + (" (within noise)" if cmp["within_noise"] else "")


def _skill_cell(row: dict[str, Any]) -> str:
    if row["is_naive"]:
        return "chosen is naive"
    return _vs(row["vs_naive"].get("test"), row["test_skill_vs_naive"])


def _ensemble_cell(row: dict[str, Any]) -> str:
    cmp = (row["ensemble"] or {}).get("vs_chosen", {}).get("test")
    if not cmp:
        return "-"
    return f"{fmt(cmp['mean_a'])}, {_vs(cmp, row['ensemble']['test_skill_vs_chosen'])}"


def _score(split: str, metric: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: (row[split] or {}).get(metric)


def _summary(rows: list[dict[str, Any]], metric: str, paths: RunPaths) -> Listing:
    """The run's summary: one row per symbol, with the freq the lake gave and random-weight warnings."""
    columns = [
        Column("symbol", "symbol"),
        Column("freq", "freq"),
        Column("best", lambda r: "naive (defaults)" if r["chosen"] == "baseline" else r["chosen"] or "none"),
        Column(f"val {metric}", _score("validation", metric), numeric=True),
        Column(f"test {metric}", _score("test", metric), numeric=True),
        Column("val MAE", _score("validation", "mae"), numeric=True),
        Column("test MAE", _score("test", "mae"), numeric=True),
        Column("test skill vs naive", _skill_cell, numeric=True),
        Column(f"ensemble test {metric} vs best", _ensemble_cell, numeric=True),
    ]
    notes = [f"[yellow]{r['symbol']}: skipped {b}:[/yellow] {why}" for r in rows for b, why in r["skipped"].items()]
    notes += [
        f"{r['symbol']} trials: "
        + ", ".join(f"{b} {n['complete']} complete + {n['pruned']} pruned" for b, n in r["trials"].items())
        for r in rows
    ]
    notes += [
        f"[yellow]{r['symbol']}: random weights in {', '.join(r['random_weights'])}[/yellow] (`sweep models init`): "
        "these numbers say nothing about the model's quality"
        for r in rows
        if r["random_weights"]
    ]
    from sweeper.select import RULES

    rule = rows[0]["selection"]["rule"] if rows else None  # one rule per run
    if rule:
        notes.append(f"selection rule: {rule} ({RULES[rule]})")
    notes += [f"{r['symbol']}: {r['selection']['why']}" for r in rows]
    notes.append(f"configs: {paths.hyperparams}   results: {paths.results}")
    meta = {"run_id": paths.run_id, "metric": metric, "select": rule, "results": str(paths.results)}
    return Listing(f"sweep run {paths.run_id}", columns, rows, key="symbols", meta=meta, notes=notes)


@app.command(cls=Command, epilog=EXIT_CODES)
@handled
def run(
    symbols: list[str] = typer.Option(None, "--symbols", help="Symbols to sweep, e.g. --symbols BTCUSD ETHUSD."),
    lake: str = typer.Option(None, help="Lake root (default: $SWEEP_LAKE, else the demo lake)."),
    freq: str = typer.Option(None, help="Bar size, e.g. 1h (default: finest available for every symbol)."),
    backends: list[str] = typer.Option(None, "--backends", help="Backends to search (default: the baselines)."),
    trials: int = typer.Option(None, help="Trials per symbol and backend (default 50)."),
    timeout: float = typer.Option(None, help="Seconds per symbol and backend study."),
    metric: str = typer.Option(None, help="Selection metric (default crps)."),
    select: str = typer.Option(
        None, "--select", help="beats-naive (default: naive unless beaten beyond noise on validation) or best."
    ),
    season: int = typer.Option(None, help="Season of the MASE/MSIS scale (default: per bar size and asset class)."),
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
        help="Optuna storage: journal (the default: Optuna's journal file in the run folder), sqlite (a "
        "SQLite file in the run folder), or a URL (sqlite:///PATH, postgresql://...).",
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
    finetune_on: list[str] = typer.Option(
        None, "--finetune-on", help="Fine-tuning trains on these symbols (same freq) too, with each swept one."
    ),
    no_prune: bool = flag("--no-prune", "Score every trial on every validation origin (no multi-fidelity pruning)."),
    out: Path = typer.Option(Path("."), help="Where results/ and hyperparams/ go."),
    run_id: str = typer.Option(None, "--run-id", help="Name of the run (default: timestamp)."),
    resume: str = typer.Option(None, "--resume", help="Continue the stopped run RUN_ID."),
    scheduler: str = typer.Option(
        None, help="Ray: asha (default; stops trials that are behind at a rung) or fifo (no early stopping)."
    ),
    json: bool = json_flag(),
) -> None:
    """Search every backend for every symbol; write per-symbol configs and result tables."""
    from sweeper.record import Config
    from sweeper.store import new_run_id
    from sweeper.sweep import RunRequest, resume_request
    from sweeper.sweep import run as run_sweep
    from sweeper.workspace import RunPaths, recorded

    given = {
        "symbols": symbols or [],
        "lake": lake and recorded(lake),
        "freq": freq,
        "backends": backends,
        "metric": metric,
        "select": select,
        "season": season,
        "horizon": horizon,
        "val_origins": val_origins,
        "test_origins": test_origins,
        "stride": stride,
        "seed": seed,
        "checkpoints": _parse_checkpoints(checkpoint) or None,
        "device": device,
        "spaces_dir": spaces and recorded(spaces),
        "storage": storage,
        "objectives": [_METRIC_ALIASES.get(o, o) for o in objectives] if objectives else None,
        "latency_budget": latency_budget,
        "engine": engine,
        "jobs": jobs,
        "workers": workers,
        "ray_address": ray_address,
        "gpus_per_trial": gpus_per_trial,
        "scheduler": scheduler,
        "finetune_on": finetune_on,
        "prune": False if no_prune else None,
    }
    if objectives and not metric:
        given["metric"] = given["objectives"][0]
    if resume:
        extra = [k for k, v in given.items() if v is not None and v != []]  # `--seed 0`, `--no-prune` too
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
    try:
        with progress(json) as step, _signals_interrupt():
            results = run_sweep(req, paths, step, resume=bool(resume))
    except KeyboardInterrupt as exc:
        err.print(f"interrupted: continue with `sweep run --resume {paths.run_id}`", highlight=False)
        raise typer.Exit(128 + (exc.args[0] if exc.args else signal.SIGINT)) from None
    except Exception as exc:
        cause = machine_fault(exc)
        if cause is None or _state["debug"]:
            raise
        _one_line(
            f"the machine stopped the run: {type(cause).__name__}: {cause}; finished trials are kept and the "
            f"cut one is queued again: continue with `sweep run --resume {paths.run_id}`"
        )
        raise typer.Exit(1) from None
    rows = [Config.from_json(paths.config(r.symbol)).summary() for r in results]
    _summary(rows, req.metric, paths).emit(json)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP (a scheduler or a closed terminal stopping the run) all end it the same
    way: the trial in flight is marked interrupted and queued again (`search.Interrupts` says where a
    signal may land), and the command exits with 128 + the signal."""
    from sweeper.search import INTERRUPTS

    def stop(signum: int, _frame: object) -> None:
        INTERRUPTS.signal(signum)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# --- sweep data ---------------------------------------------------------------------------------------


@data_app.command("check", cls=Command, epilog=EXIT_CODES)
@handled
def data_check(
    symbols: list[str] = typer.Option(..., "--symbols", help="Symbols to check."),
    lake: str = typer.Option(None, help="Lake root (default: $SWEEP_LAKE, else the demo lake)."),
    freq: str = typer.Option(None, help="Bar size (default: finest available for every symbol)."),
    json: bool = json_flag(),
) -> None:
    """Rows, first/last bar, gaps and broken rules per symbol; exit 1 when any rule is broken."""
    from sweeper.data import check_record, locate, resolve_lake

    root = resolve_lake(lake)
    records = [check_record(ref) for ref in locate(root, symbols, freq)]
    columns = [
        Column("symbol", "symbol"),
        Column("freq", "freq"),
        Column("rows", lambda r: "-" if r["rows"] is None else f"{r['rows']:,}", numeric=True),
        Column("first bar", lambda r: (r["first_ts"] or "-")[:19]),
        Column("last bar", lambda r: (r["last_ts"] or "-")[:19]),
        Column("gaps", lambda r: "-" if r["gaps"] is None else f"{r['gaps']} ({r['missing_bars']} bars)"),
        Column("longest gap", lambda r: _duration(r["longest_gap_s"])),
        Column("zero-volume", "zero_volume", numeric=True),
        Column("problems", lambda r: f"[red]{r['problem']}[/red]" if r["problem"] else "none"),
    ]
    Listing(f"lake {root}", columns, records, key="series", meta={"lake": str(root)}).emit(json)
    if any(r["problem"] for r in records):
        raise typer.Exit(1)


def _duration(seconds: int | None) -> str:
    """12s, 3h05m, 2d 1h00m; '-' for none."""
    if not seconds:
        return "-"
    if seconds < 60:
        return f"{seconds}s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days}d " if days else "") + f"{hours}h{rest // 60:02d}m"


@data_app.command("import", cls=Command, epilog=EXIT_CODES)
@handled
def data_import(
    file: Path = typer.Argument(..., help="CSV of bars (timestamp/date/ts, open, high, low, close, volume)."),
    symbol: str = typer.Option(..., help="Symbol name in the lake."),
    freq: str = typer.Option(..., help="Bar size, e.g. 1h or 1d."),
    asset_class: str = typer.Option(..., "--asset-class", help="crypto, equity, fx, commodity, ..."),
    lake: str = typer.Option(None, help="Lake root to write into (default: $SWEEP_LAKE)."),
    tz: str = typer.Option(
        None, help="Time zone of timestamps without one, e.g. UTC or America/New_York (required for those)."
    ),
) -> None:
    """Write a CSV of bars into the lake layout, after checking every row and the bar spacing against --freq."""
    from sweeper.data import import_csv

    target = lake or os.environ.get("SWEEP_LAKE")
    if not target:
        raise SweepError("import needs a lake to write into: pass --lake PATH or set $SWEEP_LAKE")
    rows, files = import_csv(file, Path(target), symbol, freq, asset_class, tz)
    stdout_console().print(f"imported {rows:,} bars of {symbol} {freq} into {target} ({files} monthly files)")


# --- sweep models ---------------------------------------------------------------------------------------


@models_app.command("init", cls=Command, epilog=EXIT_CODES)
@handled
def models_init(
    backend: str = typer.Argument(..., help="Backend whose checkpoint format to write."),
    preset: str = typer.Option("tiny", help="tiny, or small (the published small model's shapes)."),
    out: Path = typer.Option(..., help="Directory to write the checkpoint into (the checkpoint's own folder)."),
    json: bool = json_flag(),
) -> None:
    """Write a randomly initialised checkpoint in the backend's real on-disk format (no weights needed).

    The folder gets a `sweep_random_init.json` marker: configs, summaries and reports of sweeps that use
    it say the weights are random."""
    from sweeper.backends import RANDOM_INIT_MARKER, check_backend, init_random_checkpoint

    label = f"init {check_backend(backend)} ({preset})"
    with progress(json) as step:  # building the model takes seconds for the small presets; no ETA to give
        step(label, 0, 0)
        path = init_random_checkpoint(backend, preset, out)
        step(label, 1, 1)
    record = {"backend": backend, "preset": preset, "path": str(path), "marker": str(path / RANDOM_INIT_MARKER)}
    columns = [Column("backend", "backend"), Column("preset", "preset"), Column("checkpoint", "path")]
    Listing("models init (random weights)", columns, [record], key="checkpoints").emit(json)


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`--set ft_steps=200 ft_lr=1e-4`: values read as YAML scalars (numbers, strings, booleans)."""
    import yaml

    knobs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SweepError(f"--set {item!r}: use KNOB=VALUE, e.g. --set ft_steps=200")
        knobs[name] = yaml.safe_load(value)
    return knobs


@app.command(cls=Command, epilog=EXIT_CODES)
@handled
def finetune(
    backend: str = typer.Argument(..., help="toto, moirai or kronos."),
    symbols: list[str] = typer.Option(..., "--symbols", help="Symbols to train on together (one freq)."),
    lake: str = typer.Option(None, "--lake", help="Lake root (default: $SWEEP_LAKE, else the demo lake)."),
    freq: str = typer.Option(None, "--freq", help="Bar size, e.g. 1h (default: finest available for every symbol)."),
    knob: list[str] = typer.Option(None, "--set", help="Fine-tuning knobs, e.g. --set ft_steps=200 ft_lr=1e-4."),
    checkpoint: str = typer.Option(None, help="Base checkpoint: a folder or hub id (default: the backend's)."),
    out: Path = typer.Option(Path("."), help="Folder holding models/ (and results/, hyperparams/ of sweeps)."),
    name: str = typer.Option(
        None, "--name", help="Checkpoint name under models/BACKEND/ (default finetuned-SYMS-FREQ)."
    ),
    horizon: int = typer.Option(1, "--horizon", help="The sweep's horizon: training stops before its origins."),
    val_origins: int = typer.Option(None, "--val-origins", help="The sweep's validation origins."),
    test_origins: int = typer.Option(None, "--test-origins", help="The sweep's test origins."),
    stride: int = typer.Option(1, "--stride", help="The sweep's bars between origins."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fine-tune one checkpoint outside a sweep, on bars before the sweep's first validation origin; writes
    OUT/models/BACKEND/NAME in the backend's format."""
    from sweeper.data import load, resolve_lake
    from sweeper.finetune.base import finetuner_class
    from sweeper.finetune.tuner import make_checkpoint
    from sweeper.plan import Protocol
    from sweeper.workspace import Workspace

    finetuner_class(backend)
    series = load(resolve_lake(lake), symbols, freq)
    protocol = Protocol(horizon, val_origins=val_origins, test_origins=test_origins, stride=stride)
    target = Workspace(out).model(backend, name or f"finetuned-{'-'.join(symbols)}-{series[0].freq}")
    path = make_checkpoint(backend, series, protocol, _parse_sets(knob), target, checkpoint, device, seed)
    stdout_console().print(f"wrote a fine-tuned {backend} checkpoint to {path} (use --checkpoint {backend}={path})")


# --- sweep promote / eval / runs / show -------------------------------------------------------------------


@app.command(cls=Command, epilog=EXIT_CODES)
@handled
def promote(
    run_id: str = typer.Argument(..., help="Run whose winners to promote."),
    symbols: list[str] = typer.Option(None, "--symbols", help="Only these symbols (default: all of the run)."),
    force: bool = flag("--force", "Promote even when not better beyond noise."),
    dry_run: bool = flag("--dry-run", "Show what would change; write nothing."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/ and results/."),
    lake: str = typer.Option(None, help="Lake to re-score on (default: the one each config recorded)."),
    max_reuse: int = typer.Option(
        None, "--max-reuse", help="Refuse once the candidate's test origins decided this many promotions (default 3)."
    ),
    json: bool = json_flag(),
) -> None:
    """Copy a run's winners to hyperparams/best/ when they beat the current best beyond noise."""
    from sweeper.promote import promote as do_promote

    limit = {} if max_reuse is None else {"max_reuse": max_reuse}
    decisions = do_promote(out, run_id, symbols, force, dry_run, lake, **limit)
    records = [
        {
            "symbol": d.symbol,
            "action": ("would promote" if dry_run else "promoted") if d.promote else "refused",
            "reason": d.reason,
            "comparison": d.comparison.to_dict() if d.comparison else None,
            "arena": d.arena,
        }
        for d in decisions
    ]
    title = f"promote {run_id}" + (" (dry run: nothing written)" if dry_run else "")
    columns = [Column("symbol", "symbol"), Column("action", "action"), Column("why", "reason")]
    Listing(title, columns, records, key="decisions", meta={"run_id": run_id, "dry_run": dry_run}).emit(json)


def _eval_rows(c: Check) -> list[dict[str, Any]]:
    """One row per metric of a promoted config (every checked one, latency as not checked), or one row
    saying why it could not be checked."""
    from sweeper.evaluate import rows

    if c.error:
        blank = dict.fromkeys(("metric", "recorded", "now"))
        return [{"symbol": c.symbol, **blank, "status": "error", "error": c.error}]
    return [
        {"symbol": c.symbol, "metric": m, "recorded": rec, "now": now, "status": status, "error": None}
        for m, rec, now, status in rows(c)
    ]


@app.command(cls=Command, epilog=EXIT_CODES)
@handled
def forecast(
    symbols: list[str] = typer.Option(None, "--symbols", help="Symbols to forecast (default: the --config's)."),
    freq: str = typer.Option(None, help="Which promoted config when a symbol has several (e.g. 1h, 1d)."),
    horizon: int = typer.Option(None, help="Which promoted config when a symbol has several horizons."),
    config: Path = typer.Option(None, help="Forecast with this config instead of the promoted one."),
    ensemble: bool = flag("--ensemble", "Forecast with the config's ensemble."),
    lake: str = typer.Option(None, help="Lake to read the latest bars from (default: the config's)."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/best/ and results/."),
    write: Path = typer.Option(None, help="Also write the forecasts to this Parquet file."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    json: bool = json_flag(),
) -> None:
    """Forecast the bars after each symbol's latest bar: point and quantiles 5-95%."""
    from sweeper.api import forecast_latest
    from sweeper.metrics import LEVELS
    from sweeper.record import Config
    from sweeper.store import level_column, write_parquet

    if not symbols and config is None:
        raise SweepError("no symbols given: use --symbols SYMBOL [SYMBOL ...] (or --config PATH)")
    symbols = symbols or [Config.from_json(config).symbol]
    predictions = forecast_latest(out, symbols, freq, horizon, config, lake, ensemble, device)
    if write:
        import polars as pl

        write_parquet(write, pl.concat([p.frame() for p in predictions]))
    levels = [Column(level_column(q), level_column(q), numeric=True, digits=6) for q in LEVELS]
    columns = [Column("symbol", "symbol"), Column("candidate", "candidate"), Column("ts", "ts")]
    columns += [Column("step", "step", numeric=True), Column("point", "point", numeric=True, digits=6), *levels]
    records = [r for p in predictions for r in p.records()]
    Listing("forecast", columns, records, key="forecasts", notes=[f"written: {write}"] if write else ()).emit(json)


@export_app.command("mlflow", cls=Command, epilog=EXIT_CODES)
@handled
def export_mlflow(
    run_id: str = typer.Argument(..., help="Run to export."),
    tracking_uri: str = typer.Option(
        None, help="MLflow tracking URI, e.g. sqlite:///mlflow.db (default: $MLFLOW_TRACKING_URI or MLflow's)."
    ),
    experiment: str = typer.Option("sweep", help="MLflow experiment to log into (created when missing)."),
    out: Path = typer.Option(Path("."), help="Folder holding results/ and hyperparams/."),
    json: bool = json_flag(),
) -> None:
    """One MLflow run per symbol (config, report) with one nested run per study (knobs, metrics, trials)."""
    from sweeper.export import export_mlflow as do_export

    made = do_export(out, run_id, tracking_uri, experiment)
    columns = [Column("MLflow run", "name"), Column("kind", "kind"), Column("id", "mlflow_run_id")]
    title = f"run {run_id} exported to MLflow experiment {experiment!r}: {len(made)} MLflow runs"
    Listing(title, columns, made, key="mlflow_runs", meta={"run_id": run_id, "experiment": experiment}).emit(json)


@app.command("eval", cls=Command, epilog=EXIT_CODES)
@handled
def eval_(
    check: bool = flag("--check", "Exit 1 when any metric is worse than recorded beyond tolerance."),
    tolerance: float = typer.Option(0.01, help="Allowed relative worsening (0.01 = 1%)."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/best/ and results/."),
    lake: str = typer.Option(None, help="Lake to read (default: the one each config recorded)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    json: bool = json_flag(),
) -> None:
    """Re-evaluate every promoted config on its recorded protocol and data (for CI)."""
    from sweeper.evaluate import run_eval

    if tolerance < 0:
        raise SweepError(f"--tolerance must be >= 0, got {tolerance}")
    with progress(json) as step:
        checks, report = run_eval(out, tolerance, lake, device, step)
    records = [row for c in checks for row in _eval_rows(c)]
    status = {"REGRESSION": "[red]REGRESSION[/red]", "ok": "ok", "not checked": "not checked"}
    columns = [
        Column("symbol", "symbol"),
        Column("metric", "metric"),
        Column("recorded", "recorded", numeric=True, digits=6),
        Column("now", "now", numeric=True, digits=6),
        Column("status", lambda r: status.get(r["status"], f"[red]error: {r['error']}[/red]")),
    ]
    meta = {"tolerance": tolerance, "report": str(report), "markdown": str(report.with_suffix(".md"))}
    notes = [f"report: {report} and {report.with_suffix('.md')}"]
    Listing("sweep eval: recorded vs now (test origins)", columns, records, key="checks", meta=meta, notes=notes).emit(
        json
    )
    errors = [c for c in checks if c.error]
    if errors:
        err.print(f"[red]error:[/red] {len(errors)} config(s) could not be evaluated", highlight=False)
        raise typer.Exit(2)
    if check and any(c.regressions for c in checks):
        raise typer.Exit(1)


@app.command(cls=Command, epilog=EXIT_CODES)
@handled
def runs(
    out: Path = typer.Option(Path("."), help="Folder holding results/ and hyperparams/."),
    json: bool = json_flag(),
) -> None:
    """List runs by creation time: freq, trials, duration, status and winners."""
    from sweeper.runs import list_runs

    records = [r.to_dict() for r in list_runs(out)]
    columns = [
        Column("run", "run_id"),
        Column("created", lambda r: r["created"].replace("T", " ")[:19]),
        Column("status", "status"),
        Column("freq", "freq"),
        Column("symbols", lambda r: " ".join(r["symbols"])),
        Column("trials", "trials", numeric=True),
        Column("duration", lambda r: _duration(round(r["duration_s"])) if r["duration_s"] is not None else "-"),
        Column("cache", lambda r: f"{r['cache_bytes'] / 2**20:.1f} MiB", numeric=True),
        Column("winners", lambda r: " ".join(f"{s}:{b or '-'}" for s, b in r["winners"].items())),
    ]
    Listing(f"runs in {out / 'results'}", columns, records, key="runs").emit(json)


@app.command(cls=Command, epilog=EXIT_CODES)
@handled
def show(
    run_id: str = typer.Argument(..., help="Run to show."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/ and results/."),
    json: bool = json_flag(),
) -> None:
    """Per symbol: every backend's best validation and test scores, the ensemble and the naive floor."""
    from sweeper.runs import candidates
    from sweeper.workspace import RunPaths

    records = candidates(RunPaths(out, run_id))
    columns = [
        Column("symbol", lambda r: f"{r['symbol']} {r['freq']} H={r['horizon']}"),
        Column("candidate", lambda r: r["candidate"] + (" *" if r["chosen"] else "")),
        Column("params", lambda r: str(r["params"] or r["error"] or "")),
        Column("metric", "metric"),
        Column("val", "validation", numeric=True),
        Column("test", "test", numeric=True),
        Column("weight", "weight", numeric=True, digits=3),
    ]
    notes = ["* chosen on validation; weight: share in the ensemble"]
    Listing(f"sweep show {run_id}", columns, records, key="candidates", meta={"run_id": run_id}, notes=notes).emit(json)


# --- sweep cache ----------------------------------------------------------------------------------------


@cache_app.command("clean", cls=Command, epilog=EXIT_CODES)
@handled
def cache_clean(
    run_id: str = typer.Argument(None, help="Run whose forecast cache to remove."),
    all_runs: bool = flag("--all", "Every run under OUT/results that is not running."),
    out: Path = typer.Option(Path("."), help="Folder holding results/ and hyperparams/."),
    json: bool = json_flag(),
) -> None:
    """Remove a run's forecast cache (results/RUN_ID/cache); configs, studies and tables stay.

    A later report or eval recomputes the draws it needs, identical to the removed ones."""
    from sweeper.runs import clean_caches

    if (run_id is None) == (not all_runs):
        raise SweepError("cache clean needs a RUN_ID or --all (not both)")
    records = clean_caches(out, None if all_runs else run_id)
    columns = [Column("run", "run_id"), Column("freed", lambda r: f"{r['bytes'] / 2**20:.1f} MiB", numeric=True)]
    columns.append(Column("note", lambda r: r["skipped"] or ""))
    Listing(f"cache clean in {out / 'results'}", columns, records, key="runs").emit(json)


# --- sweep report ---------------------------------------------------------------------------------------


@app.command(cls=Command, epilog=EXIT_CODES)
@handled
def report(
    run_id: str = typer.Argument(..., help="Run to report on."),
    out: Path = typer.Option(Path("."), help="Folder holding hyperparams/ and results/."),
    lake: str = typer.Option(None, help="Lake for the forecast fans (default: the one each config recorded)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda, for model backends."),
    json: bool = json_flag(),
) -> None:
    """Write results/RUN_ID/report.html: forecast fans, paired differences, calibration, trading, search."""
    from sweeper.report import write_report

    with progress(json) as step:
        path = write_report(out, run_id, lake, device, step)
    record = {"run_id": run_id, "report": str(path), "bytes": path.stat().st_size}
    Listing(f"sweep report {run_id}", [Column("report", "report")], [record], key="reports").emit(json)


# --- sweep train ---------------------------------------------------------------------------------------


@train_app.command("marketgpt", cls=Command, epilog=EXIT_CODES)
@handled
def train_marketgpt(
    symbols: list[str] = typer.Option(..., "--symbols", help="Symbols to train on together."),
    freq: str | None = typer.Option(None, "--freq", help="Bar frequency (default: finest common one)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes), small, base (GPU)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Total optimiser steps (preset default)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop this call after M minutes."),
    lake: str = typer.Option(None, "--lake", help="Lake root (default: $SWEEP_LAKE, else the demo lake)."),
    out: Path = typer.Option(Path("."), help="Folder holding models/ (and results/, hyperparams/ of sweeps)."),
    name: str | None = typer.Option(None, "--name", help="Checkpoint name under models/marketgpt/."),
    resume: bool = flag("--resume", "Continue the checkpoint of --name."),
    horizon: int = typer.Option(1, "--horizon", help="The sweep's horizon: training stops before its origins."),
    val_origins: int | None = typer.Option(None, "--val-origins", help="The sweep's validation origins."),
    test_origins: int | None = typer.Option(None, "--test-origins", help="The sweep's test origins."),
    stride: int = typer.Option(1, "--stride", help="The sweep's bars between origins."),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="Bins per OHLC component (preset: 1024)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(1, "--threads", help="CPU threads (0: torch's default; 1 suits a shared box)."),
    json: bool = json_flag(),
) -> None:
    """Train MarketGPT on bars before the sweep's first validation origin; writes OUT/models/marketgpt/NAME."""
    from sweeper.marketgpt.train import train
    from sweeper.plan import Protocol
    from sweeper.workspace import Workspace

    target = None if name is None else Workspace(out).model("marketgpt", name)
    summary = train(
        [w for item in symbols for w in item.split(",") if w],
        freq,
        lake,
        preset,
        target,
        max_steps,
        max_minutes,
        resume=resume,
        protocol=Protocol(horizon, val_origins=val_origins, test_origins=test_origins, stride=stride),
        vocab_size=vocab_size,
        device=device,
        seed=seed,
        threads=threads or None,
        workspace=out,
        progress=not json or err.is_terminal,
    )
    columns = [
        Column("checkpoint", "out_dir"),
        Column("device", "device"),
        Column("steps (this run / all)", lambda r: f"{r['steps_run']} / {r['steps']}", numeric=True),
        Column("loss first -> last", lambda r: f"{fmt(r['first_loss'])} -> {fmt(r['last_loss'])}", numeric=True),
        Column("minutes (bins s)", lambda r: f"{r['minutes']:.1f} ({r['tokenizer_seconds']:.0f})", numeric=True),
        Column("trained until", "trained_until"),
    ]
    Listing("sweep train marketgpt", columns, [summary.to_dict()], key="checkpoints").emit(json)
