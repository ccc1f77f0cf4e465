"""Conventions of Typer/Rich tools, checked on every command of the tree: -h, --version, flags shown as
flags, exit codes in the help, --json on every table (and it parses), progress with an ETA."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from sweeper import __version__
from sweeper.atomic import read_json, write_json
from sweeper.cli import app, expand_list_options
from sweeper.search import owner_id
from tests.helpers import SHARED_LAKE

SMALL = ["--lake", SHARED_LAKE, "--val-origins", 60, "--test-origins", 20]
# commands that print one line rather than a table
NO_TABLE = {"data import", "finetune"}  # one line each, like the import it is


def commands(group: Any = typer.main.get_command(app), prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf command of the tree, as ("data check", command)."""
    for name, cmd in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(cmd, "commands"):  # a group (Typer's own click, so no isinstance on click.Group)
            yield from commands(cmd, path + " ")
        else:
            yield path, cmd


def has_json(cmd: Any) -> bool:
    return any("--json" in p.opts for p in cmd.params)


@pytest.fixture(scope="module")
def cli() -> Callable[..., object]:
    runner = CliRunner()
    return lambda *args: runner.invoke(app, expand_list_options([str(a) for a in args]), catch_exceptions=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, cli) -> Path:
    """Two finished runs, created `zeta` first and `alpha` second, and a promoted best."""
    out = tmp_path_factory.mktemp("ws")
    for run_id, symbols in (("zeta", ["BTCUSD"]), ("alpha", ["BTCUSD", "ETHUSD"])):
        args = ("run", "--symbols", *symbols, "--freq", "1d", "--backends", "naive", "drift", "--trials", 3)
        r = cli(*args, *SMALL, "--out", out, "--run-id", run_id)
        assert r.exit_code == 0, r.output
    assert cli("promote", "alpha", "--out", out).exit_code == 0
    return out


def test_help_takes_h_and_documents_exit_codes(cli) -> None:
    for args in ((), ("run",), ("data",), ("data", "import"), ("cache", "clean")):
        short, long = cli(*args, "-h"), cli(*args, "--help")
        assert short.exit_code == 0 and short.stdout == long.stdout
        text = " ".join(short.stdout.split())
        assert "Exit codes: 0 done; 1 a check failed" in text and "2 bad input" in text and "130 interrupted" in text


def test_version_prints_the_package_version(cli) -> None:
    r = cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"sweep {__version__}"


@pytest.mark.parametrize("path", [p for p, _ in commands()])
def test_boolean_options_are_shown_as_flags(cli, path: str) -> None:
    r = cli(*path.split(), "-h")
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.stdout and "/--no-" not in r.stdout  # no --x/--no-x pairs (--no-prune is a flag)


def test_every_command_with_a_table_has_json() -> None:
    missing = [p for p, cmd in commands() if p not in NO_TABLE and not has_json(cmd)]
    assert not missing


def test_every_json_output_parses(workspace: Path, cli, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    out = ("--out", workspace)
    calls = {
        "run": ("run", "--symbols", "ETHUSD", "--freq", "1d", "--backends", "naive", "--trials", 2, *SMALL, *out),
        "runs": ("runs", *out),
        "show": ("show", "alpha", *out),
        "promote": ("promote", "zeta", "--dry-run", *out),
        "eval": ("eval", *out),
        "report": ("report", "zeta", *out),
        "cache clean": ("cache", "clean", "zeta", *out),
        "forecast": ("forecast", "--symbols", "BTCUSD", "ETHUSD", *out),
        "export mlflow": ("export", "mlflow", "zeta", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *out),
        "data check": ("data", "check", "--symbols", "BTCUSD", "ETHUSD", "--lake", SHARED_LAKE, "--freq", "1d"),
        "models init": ("models", "init", "marketgpt", "--preset", "tiny", "--out", ck),
        "train marketgpt": (
            "train", "marketgpt", "--symbols", "BTCUSD", "--freq", "1d", "--lake", SHARED_LAKE,
            "--max-steps", 1, "--vocab-size", 16, "--name", "t", *out,
        ),
    }  # fmt: skip
    # every command that has --json is called here: a new one fails this test until it is added
    assert set(calls) == {p for p, cmd in commands() if has_json(cmd)}
    docs = {}
    for name, args in calls.items():
        r = cli(*args, "--json")
        assert r.exit_code == 0, (name, r.output)
        docs[name] = json.loads(r.stdout)  # stdout holds the JSON and nothing else
    assert [r["run_id"] for r in docs["runs"]["runs"]][:2] == ["zeta", "alpha"]
    assert docs["models init"]["checkpoints"][0]["path"] == str(ck)
    assert Path(docs["train marketgpt"]["checkpoints"][0]["out_dir"]) == workspace / "models" / "marketgpt" / "t"
    assert {c["candidate"] for c in docs["show"]["candidates"]} == {"naive", "drift", "ensemble"}
    assert docs["eval"]["checks"][0]["status"] == "ok"
    assert [f["symbol"] for f in docs["forecast"]["forecasts"]] == ["BTCUSD", "ETHUSD"]
    assert [m["kind"] for m in docs["export mlflow"]["mlflow_runs"]] == ["symbol", "study", "study"]


def test_runs_are_listed_by_creation_time_with_freq_trials_duration(workspace: Path, cli) -> None:
    runs = {r["run_id"]: r for r in json.loads(cli("runs", "--out", workspace, "--json").stdout)["runs"]}
    assert list(runs)[:2] == ["zeta", "alpha"]  # created first, listed first, although "alpha" sorts before
    assert runs["alpha"]["freq"] == "1d" and runs["alpha"]["trials"] == 2 * 2 * 3  # symbols x backends x trials
    assert runs["alpha"]["duration_s"] >= 0 and runs["alpha"]["status"] == "complete"
    table = cli("runs", "--out", workspace).stdout
    assert all(h in table for h in ("freq", "trials", "duration")) and table.index("zeta") < table.index("alpha")


def test_progress_shows_an_eta(workspace: Path, cli) -> None:
    r = cli("report", "zeta", "--out", workspace)
    assert r.exit_code == 0 and "report zeta" in r.stdout and "eta" in r.stdout
    r = cli("eval", "--out", workspace)
    assert r.exit_code == 0 and "eval" in r.stdout.splitlines()[0] and "eta" in r.stdout


def test_cache_clean_removes_only_the_cache_and_never_under_a_running_run(workspace: Path, cli) -> None:
    results = workspace / "results" / "alpha"
    assert (results / "cache").is_dir()
    r = cli("cache", "clean", "alpha", "--out", workspace, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["runs"][0]["bytes"] > 0
    assert not (results / "cache").exists() and (results / "study.journal").is_file()
    assert (workspace / "hyperparams" / "alpha" / "BTCUSD.json").is_file()
    # a report afterwards recomputes the draws it needs
    assert cli("report", "alpha", "--out", workspace).exit_code == 0
    # a run whose recorded process is alive (this one) is refused alone, and left alone by --all
    manifest = read_json(results / "manifest.json")
    write_json(results / "manifest.json", {**manifest, "status": "running", "owner": owner_id()})
    try:
        r = cli("cache", "clean", "alpha", "--out", workspace)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "is running" in r.stderr
        assert (results / "cache").is_dir()
        done = {
            x["run_id"]: x
            for x in json.loads(cli("cache", "clean", "--all", "--out", workspace, "--json").stdout)["runs"]
        }
        assert done["alpha"]["skipped"] and (results / "cache").is_dir()
    finally:
        write_json(results / "manifest.json", manifest)
    for args in ((), ("alpha", "--all")):
        assert cli("cache", "clean", *args, "--out", workspace).exit_code == 2


def test_scheduler_switch_for_ray(cli, tmp_path: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sweeper.engines import engine_for
    from sweeper.engines.ray_tune import RayEngine, RayOptions
    from sweeper.sweep import RunRequest, prepare, study_settings
    from sweeper.workspace import RunPaths

    assert isinstance(RayOptions(None, None, 0, tmp_path).trial_scheduler("min", 4), ASHAScheduler)
    assert isinstance(RayOptions(None, None, 0, tmp_path, "fifo").trial_scheduler("min", 4), FIFOScheduler)
    req = RunRequest(["BTCUSD"], lake=str(SHARED_LAKE), freq="1d", engine="ray", scheduler="fifo", val_origins=60)
    prep, paths = prepare(req), RunPaths(tmp_path, "r")
    engine = engine_for(req, study_settings(prep, paths), prep.tasks, paths.ray)
    assert isinstance(engine, RayEngine) and engine.opts.scheduler == "fifo"  # nothing started yet
    base = ("run", "--symbols", "BTCUSD", "--freq", "1d", *SMALL, "--out", tmp_path)
    r = cli(*base, "--scheduler", "fifo")
    assert r.exit_code == 2 and "need --engine ray" in r.stderr
    r = cli(*base, "--engine", "ray", "--scheduler", "hyperband")
    assert r.exit_code == 2 and "unknown --scheduler 'hyperband': use asha or fifo" in r.stderr
    assert not (tmp_path / "results").exists()


def test_a_failing_backend_is_one_line_without_optuna_tracebacks(cli, tmp_path: Path) -> None:
    args = ("run", "--symbols", "BTCUSD", "--freq", "1d", "--backends", "toto", "naive", "--trials", 2, *SMALL)
    r = cli(*args, "--checkpoint", f"toto={tmp_path / 'missing'}", "--out", tmp_path)
    # a checkpoint the user named must load: the run stops before anything runs (issue 13)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "Trial 0 failed" not in r.output
    assert r.stderr.startswith("error: toto checkpoint") and not (tmp_path / "results").exists()


def test_summary_names_the_freq_it_chose(cli, tmp_path: Path) -> None:
    args = ("run", "--symbols", "BTCUSDT", "--backends", "naive", "--trials", 2, *SMALL, "--out", tmp_path)
    r = cli(*args)  # no --freq: the finest bar size in the lake
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if "symbol" in line)
    row = next(line for line in r.stdout.splitlines() if line.startswith("│ BTCUSDT"))
    assert header.split("┃")[2].strip() == "freq" and row.split("│")[2].strip() == "1min"


def test_summary_warns_about_random_weights(cli, tmp_path: Path) -> None:
    ck = tmp_path / "mg"
    assert cli("models", "init", "marketgpt", "--preset", "tiny", "--out", ck).exit_code == 0
    assert (ck / "sweep_random_init.json").is_file()
    args = ("run", "--symbols", "BTCUSDT", "--freq", "1h", "--backends", "marketgpt", "naive", "--trials", 2, *SMALL)
    r = cli(*args, "--checkpoint", f"marketgpt={ck}", "--out", tmp_path, "--run-id", "r")
    assert r.exit_code == 0, r.output
    assert "BTCUSDT: random weights in marketgpt" in r.stdout
    config = read_json(tmp_path / "hyperparams" / "r" / "BTCUSDT.json")
    assert config["backends"]["marketgpt"]["random_init"] is True
    assert "random_init" not in config["backends"]["naive"]
    shown = json.loads(cli("show", "r", "--out", tmp_path, "--json").stdout)["candidates"]
    assert {c["candidate"]: c["random_init"] for c in shown}["marketgpt"] is True
