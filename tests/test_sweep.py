"""End to end on real candles: configs, tables, resume after a kill, and the forecast cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import polars as pl
import pytest

from sweeper.cache import ForecastCache
from sweeper.engines.local import run_study
from sweeper.forecast import chunk_bounds
from sweeper.objective import Candidate
from sweeper.search import INTERRUPTED, Budget, StudyOutcome, StudySettings, open_study
from sweeper.sweep import RunRequest, prepare
from tests.helpers import SHARED_LAKE, SMALL, SWEEP_BIN, count_trials, signal_mid_sweep, storage_of


def test_daily_sweep_writes_valid_configs(tmp_path: Path, sweep) -> None:
    result = sweep(
        "run",
        "--symbols",
        "BTCUSD",
        "ETHUSD",
        "--lake",
        SHARED_LAKE,
        "--freq",
        "1d",
        "--trials",
        6,
        "--out",
        tmp_path,
        "--run-id",
        "daily",
        "--json",
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [r["symbol"] for r in summary["symbols"]] == ["BTCUSD", "ETHUSD"]
    for sym in ("BTCUSD", "ETHUSD"):
        cfg = json.loads((tmp_path / "hyperparams" / "daily" / f"{sym}.json").read_text())
        assert cfg["schema_version"] == 2 and cfg["symbol"] == sym and cfg["freq"] == "1d"
        assert cfg["chosen"]["backend"] in ("naive", "drift", "seasonal_naive")
        chosen = cfg["backends"][cfg["chosen"]["backend"]]
        assert chosen["params"] == cfg["chosen"]["params"]
        # beats-naive (the default): naive, unless the chosen one beats it beyond noise on validation
        assert cfg["selection"]["rule"] == "beats-naive"
        if cfg["chosen"]["backend"] != "naive":
            vs_val = cfg["comparisons"]["chosen_vs_naive"]["val"]
            assert not vs_val["within_noise"] and vs_val["diff"] < 0
        assert set(cfg["backends"]) == {"naive", "drift", "seasonal_naive"}
        assert all(b["trials"] + b["pruned_trials"] == 6 and b["trials"] >= 1 for b in cfg["backends"].values())
        assert cfg["protocol"]["val_origins"]["count"] == 120 and cfg["protocol"]["test_origins"]["count"] == 40
        assert cfg["protocol"]["val_origins"]["last_ts"] < cfg["protocol"]["test_origins"]["first_ts"]
        assert cfg["baseline"]["backend"] == "naive" and cfg["baseline"]["test"]["crps"] > 0
        if cfg["chosen"]["backend"] == "naive":
            assert "chosen_vs_naive" not in cfg["comparisons"]  # naive against itself says nothing
        else:
            vs = cfg["comparisons"]["chosen_vs_naive"]["test"]
            assert vs["low"] <= vs["diff"] <= vs["high"]
        runner = cfg["comparisons"]["chosen_vs_runner_up"]["val"]
        assert runner["low"] <= runner["diff"] <= runner["high"] and 0 <= runner["p_value"] <= 1
        assert len(cfg["data"]["fingerprint"]) == 16 and cfg["versions"]["optuna"]
    run = tmp_path / "results" / "daily"
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
    trials = pl.read_parquet(run / "trials.parquet")
    assert trials.height == 2 * 3 * 6 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    origins = pl.read_parquet(run / "origins.parquet")
    assert (
        origins.filter(
            (pl.col("symbol") == "ETHUSD") & (pl.col("split") == "val") & (pl.col("candidate") == "naive")
        ).height
        == 120
    )
    assert not list(tmp_path.rglob("*.tmp"))


def test_hourly_sweep_readable_summary(tmp_path: Path, sweep) -> None:
    result = sweep(
        "run",
        "--symbols",
        "BTCUSDT",
        "ETHUSDT",
        "--lake",
        SHARED_LAKE,
        "--freq",
        "1h",
        "--trials",
        4,
        "--backends",
        "naive",
        "drift",
        "--out",
        tmp_path,
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    assert "BTCUSDT" in result.stdout and "ETHUSDT" in result.stdout and "test skill vs naive" in result.stdout


def test_killed_sweep_with_pruning_resumes_keeping_every_finished_trial(tmp_path: Path) -> None:
    _, _, db = signal_mid_sweep(tmp_path, "k", ["naive", "drift"], 120, 30, signal.SIGKILL)
    done_before = count_trials(db)
    assert 30 <= done_before < 240, "the kill must land mid-sweep"
    storage = storage_of(db)
    before = {
        t.number: (t.state.name, t.params, t.value, t.intermediate_values)
        for t in optuna.load_study(study_name="ETHUSD--naive", storage=storage).trials
        if t.state.name in ("COMPLETE", "PRUNED")
    }
    assert {state for state, *_ in before.values()} == {"COMPLETE", "PRUNED"}, "pruning must be on, and finish some"
    assert not (tmp_path / "hyperparams" / "k").exists()
    out = subprocess.run([*SWEEP_BIN, "run", "--resume", "k", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for backend in ("naive", "drift"):
        study = optuna.load_study(study_name=f"ETHUSD--{backend}", storage=storage)
        done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        interrupted = [t for t in study.trials if t.user_attrs.get(INTERRUPTED)]
        assert len(done) == 120 and len(study.trials) == 120 + len(interrupted)
    after = {
        t.number: (t.state.name, t.params, t.value, t.intermediate_values)
        for t in optuna.load_study(study_name="ETHUSD--naive", storage=storage).trials
    }
    assert all(after[n] == t for n, t in before.items())  # finished trials kept as they were, not redone
    cfg = json.loads((tmp_path / "hyperparams" / "k" / "ETHUSD.json").read_text())
    naive = cfg["backends"]["naive"]
    assert naive["trials"] + naive["pruned_trials"] == 120 and naive["pruned_trials"] > 0
    trials = pl.read_parquet(tmp_path / "results" / "k" / "trials.parquet")
    pruned = trials.filter(pl.col("state") == "PRUNED")
    assert pruned.height > 0 and (pruned["prune_step"] < len(chunk_bounds(120))).all()


def test_stale_running_trial_is_requeued(tmp_path: Path) -> None:
    req = RunRequest(
        symbols=["ETHUSD"], lake=str(SHARED_LAKE), backends=["naive"], trials=3, val_origins=60, test_origins=20
    )
    prep = prepare(req)
    settings = StudySettings(f"sqlite:///{tmp_path / 's.db'}", ("crps",), Budget(3), 0)
    study = open_study(settings, "ETHUSD", "naive")
    trial = study.ask()
    ctx = prep.tasks[0].spaces["naive"].params["context_length"].suggest(trial)  # dies here: left RUNNING
    study = run_study(prep.tasks[0], "naive", settings)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 3 and states.count("FAIL") == 1
    assert study.trials[0].user_attrs[INTERRUPTED] is True
    space = prep.tasks[0].spaces["naive"]
    assert space.values(study.trials[1].params)["context_length"] == ctx  # its knobs were queued again


def test_cached_trials_never_call_the_model(tmp_path: Path) -> None:
    req = RunRequest(
        symbols=["BTCUSDT"], lake=str(SHARED_LAKE), freq="1h", backends=["naive"], val_origins=500, test_origins=100
    )
    prep = prepare(req, ForecastCache(tmp_path / "cache"))
    task = prep.tasks[0]
    fc = task.forecaster
    base = {"num_samples": 256, "aggregation": "median", "context_length": 128}
    first = task.scores(Candidate("naive", base), "val")
    calls = fc.model_calls
    assert calls >= 1
    for change in (
        {"num_samples": 17},
        {"aggregation": "trimmed_mean_10"},
        {"num_samples": 200, "aggregation": "quantile_0.4"},
    ):
        task.scores(Candidate("naive", {**base, **change}), "val")
    assert fc.model_calls == calls
    # same knobs give the same scores from the cache
    again = task.scores(Candidate("naive", base), "val")
    assert (again["crps"] == first["crps"]).all()
    # a model-changing knob does call the model
    task.scores(Candidate("naive", {**base, "context_length": 64}), "val")
    assert fc.model_calls == 2 * calls
    # a new process (new forecaster, same folder) reads the disk cache: no call at all
    fresh = prepare(req, ForecastCache(tmp_path / "cache")).tasks[0]
    fresh.scores(Candidate("naive", {**base, "aggregation": "mean"}), "val")
    assert fresh.forecaster.model_calls == 0


def test_selection_never_reads_test_targets(tmp_path: Path) -> None:
    from sweeper.select import select

    req = RunRequest(
        symbols=["ETHUSD"], lake=str(SHARED_LAKE), backends=["naive", "drift"], val_origins=150, test_origins=60
    )
    best = {
        "naive": StudyOutcome({"num_samples": 64, "aggregation": "median", "context_length": 64}, 1),
        "drift": StudyOutcome({"num_samples": 64, "aggregation": "mean", "context_length": 32}, 1),
    }
    clean = select(prepare(req).tasks[0], best, "crps")
    task = prepare(req).tasks[0]
    # wreck every test target: selection must not move
    task.series.ohlcv[task.plan.test[0] :, :4] *= 3.0
    wrecked = select(task, best, "crps")
    assert wrecked.chosen == clean.chosen
    for b in ("naive", "drift"):
        assert wrecked.backends[b].val["crps"] == clean.backends[b].val["crps"]  # latency is wall time
        assert wrecked.backends[b].test["crps"] != clean.backends[b].test["crps"]


@pytest.mark.parametrize("metric", ["mae", "directional_accuracy"])
def test_other_selection_metrics(metric: str, tmp_path: Path, sweep) -> None:
    result = sweep(
        "run",
        "--symbols",
        "ETHUSD",
        "--lake",
        SHARED_LAKE,
        "--trials",
        3,
        "--metric",
        metric,
        "--select",
        "best",
        "--backends",
        "naive",
        "drift",
        "--out",
        tmp_path,
        "--run-id",
        "m",
        "--json",
        *SMALL,
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "hyperparams" / "m" / "ETHUSD.json").read_text())
    vals = {b: r["validation"][metric] for b, r in cfg["backends"].items()}
    pick = max(vals, key=vals.get) if metric == "directional_accuracy" else min(vals, key=vals.get)
    assert cfg["chosen"]["backend"] == pick and cfg["selection_metric"] == metric
    assert cfg["selection"]["rule"] == "best"
    row = json.loads(result.stdout)["symbols"][0]
    assert json.loads(result.stdout)["select"] == "best" and row["selection"]["rule"] == "best"
    # skill is positive when the chosen one is better on test, whichever way the metric points
    chosen_test, naive_test = cfg["backends"][pick]["test"][metric], cfg["baseline"]["test"][metric]
    if pick != "naive":
        better = chosen_test > naive_test if metric == "directional_accuracy" else chosen_test < naive_test
        assert (row["test_skill_vs_naive"] > 0) == better
    # the ensemble is compared on the selection metric, not on CRPS
    assert cfg["comparisons"]["ensemble_vs_chosen"]["test"]["metric"] == metric
    ens = row["ensemble"]
    assert ens["vs_chosen"]["test"]["mean_a"] == pytest.approx(ens["test"][metric])


def test_pareto_search_and_latency_budget(tmp_path: Path, sweep) -> None:
    base = [
        "run",
        "--symbols",
        "ETHUSD",
        "--lake",
        SHARED_LAKE,
        "--backends",
        "naive",
        "--trials",
        12,
        "--objectives",
        "crps",
        "latency",
        "--out",
        tmp_path,
        *SMALL,
    ]
    assert sweep(*base, "--run-id", "p").exit_code == 0
    cfg = json.loads((tmp_path / "hyperparams" / "p" / "ETHUSD.json").read_text())
    front = cfg["backends"]["naive"]["pareto_front"]
    assert cfg["search"]["objectives"] == ["crps", "latency_s"] and front
    # no point of the front is dominated by another
    for a in front:
        assert not any(b["values"][0] < a["values"][0] and b["values"][1] < a["values"][1] for b in front)
    trials = pl.read_parquet(tmp_path / "results" / "p" / "trials.parquet")
    budget = float(trials["val_latency_s"].median())
    assert sweep(*base, "--run-id", "q", "--latency-budget", budget).exit_code == 0
    q = json.loads((tmp_path / "hyperparams" / "q" / "ETHUSD.json").read_text())
    assert q["backends"]["naive"]["validation"]["latency_s"] <= budget
    assert q["search"]["latency_budget_s"] == budget


def test_timeout_stops_each_study(tmp_path: Path, sweep) -> None:
    start = time.time()
    r = sweep(
        "run",
        "--symbols",
        "ETHUSD",
        "--lake",
        SHARED_LAKE,
        "--backends",
        "naive",
        "--trials",
        100000,
        "--timeout",
        2,
        "--out",
        tmp_path,
        "--run-id",
        "t",
        *SMALL,
    )
    assert r.exit_code == 0, r.output
    assert time.time() - start < 30
    cfg = json.loads((tmp_path / "hyperparams" / "t" / "ETHUSD.json").read_text())
    assert 1 <= cfg["backends"]["naive"]["trials"] < 100000


def test_checkpoint_id_follows_content_not_path(tmp_path: Path) -> None:
    from sweeper.forecast import checkpoint_id

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "sub").mkdir(parents=True)
        (d / "config.json").write_text('{"d": 64}')
        (d / "sub" / "model.safetensors").write_bytes(b"\x00" * 100)
    assert checkpoint_id(str(a)) == checkpoint_id(str(b)) != str(a)
    c = tmp_path / "c"
    (c / "sub").mkdir(parents=True)
    (c / "config.json").write_text('{"d": 64}')
    (c / "sub" / "model.safetensors").write_bytes(b"\x01" * 100)  # retrained: same names, new weights
    assert checkpoint_id(str(c)) != checkpoint_id(str(a))
    # fine-tuned weights: their metadata names the base's path, which must not change the draws
    for d, base in ((a, "/home/x/base"), (b, "/ci/checkout/base")):
        (d / "finetune.json").write_text(json.dumps({"base_checkpoint": base}))
    checkpoint_id.cache_clear()
    assert checkpoint_id(str(a)) == checkpoint_id(str(b))
    assert checkpoint_id("Salesforce/moirai-1.1-R-small") == "Salesforce/moirai-1.1-R-small"


def test_two_processes_compute_each_cache_entry_once(tmp_path: Path) -> None:
    """Two workers missing the same key at once: the second waits for the first and reads its draws."""
    code = (
        "import time; from sweeper.cache import ForecastCache; from sweeper.objective import Candidate;"
        "from sweeper.sweep import RunRequest, prepare; from sweeper.backends.baselines import Naive;"
        # a slow model: both processes are sure to miss the cache while the first is still computing
        "slow = Naive.forecast; Naive.forecast = lambda *a, **k: (time.sleep(3), slow(*a, **k))[1];"
        f"req = RunRequest(symbols=['BTCUSDT'], lake={str(SHARED_LAKE)!r}, freq='1h', backends=['naive'],"
        " val_origins=500, test_origins=100);"
        f"task = prepare(req, ForecastCache(__import__('pathlib').Path({str(tmp_path / 'cache')!r}))).tasks[0];"
        "task.scores(Candidate('naive', {'num_samples': 64, 'aggregation': 'mean', 'context_length': 512}), 'val');"
        "print(task.forecaster.model_calls)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    calls = sorted(int(p.communicate()[0].strip()) for p in procs)
    assert sum(calls) == len(chunk_bounds(500))  # each chunk's draws computed once, by one of them
    assert len(list((tmp_path / "cache").glob("*.npy"))) == len(chunk_bounds(500))  # one entry per chunk


def test_backend_without_weights_is_skipped_and_reported(tmp_path: Path, sweep, monkeypatch) -> None:
    """--offline with a hub id that is not cached: the sweep goes on without that backend and says so."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.time()
    r = sweep(
        "--offline",
        "run",
        "--symbols",
        "BTCUSD",
        "--lake",
        SHARED_LAKE,
        "--freq",
        "1d",
        "--backends",
        "moirai2",
        "naive",
        "--trials",
        2,
        "--out",
        tmp_path,
        "--run-id",
        "w",
        "--val-origins",
        100,
        "--test-origins",
        30,
    )
    assert r.exit_code == 0, r.output
    assert time.time() - start < 30  # no network retries
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "skipped moirai2" in r.stdout and "Salesforce/moirai-2.0-R-small" in r.stdout
    cfg = json.loads((tmp_path / "hyperparams" / "w" / "BTCUSD.json").read_text())
    assert "Salesforce/moirai-2.0-R-small" in cfg["backends"]["moirai2"]["error"]
    assert cfg["backends"]["moirai2"]["params"] is None and cfg["chosen"]["backend"] == "naive"


def test_ctrl_c_exits_130_and_resume_redoes_the_interrupted_trial(tmp_path: Path) -> None:
    proc, stderr, db = signal_mid_sweep(tmp_path, "c", ["naive"], 150, 10, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert "sweep run --resume c" in stderr
    out = subprocess.run([*SWEEP_BIN, "run", "--resume", "c", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name="ETHUSD--naive", storage=storage_of(db))
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 150
    assert all(t.user_attrs.get(INTERRUPTED) for t in study.trials if t.state.name == "FAIL")


def test_a_backend_whose_every_trial_fails_is_reported_with_the_reason(tmp_path: Path, sweep) -> None:
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "naive.yaml").write_text((Path(__file__).parents[1] / "search_spaces" / "naive.yaml").read_text())
    (spaces / "seasonal_naive.yaml").write_text(
        "backend: seasonal_naive\nparams:\n  num_samples: {type: int, low: 16, high: 64}\n"
        "  aggregation: {type: categorical, choices: [mean]}\n  context_length: {type: categorical, choices: [16]}\n"
        "  season: {type: categorical, choices: [24]}\n"  # a context of 16 bars cannot hold two seasons of 24
    )
    r = sweep(
        "run",
        "--symbols",
        "ETHUSD",
        "--lake",
        SHARED_LAKE,
        "--backends",
        "naive",
        "seasonal_naive",
        "--spaces",
        spaces,
        "--trials",
        3,
        "--out",
        tmp_path,
        "--run-id",
        "f",
        *SMALL,
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "hyperparams" / "f" / "ETHUSD.json").read_text())
    assert (
        "no trial completed (3 of 3 failed: ValueError: seasonal_naive needs a context longer than 2 seasons"
        in (cfg["backends"]["seasonal_naive"]["error"])
    )
    trials = pl.read_parquet(tmp_path / "results" / "f" / "trials.parquet").filter(backend="seasonal_naive")
    assert trials["state"].to_list() == ["FAIL"] * 3 and trials["error"].null_count() == 0


def test_journal_storage_runs_resumes_and_recovers(tmp_path: Path, sweep) -> None:
    base = ["run", "--symbols", "ETHUSD", "--lake", SHARED_LAKE, "--backends", "naive", "--out", tmp_path, *SMALL]
    assert sweep(*base, "--trials", 6, "--storage", "journal", "--run-id", "j").exit_code == 0
    journal = tmp_path / "results" / "j" / "study.journal"
    assert journal.is_file() and not (tmp_path / "results" / "j" / "study.db").exists()
    from sweeper.search import storage_for

    study = optuna.load_study(study_name="ETHUSD--naive", storage=storage_for(f"journal:{journal.resolve()}"))
    before = {t.number: t.params for t in study.trials}
    study.ask().suggest_categorical("context_length", [16, 32, 64, 128, 256, 512])  # a process died here
    r = sweep("run", "--resume", "j", "--out", tmp_path, "--trials", 12)
    assert r.exit_code == 0, r.output
    study = optuna.load_study(study_name="ETHUSD--naive", storage=storage_for(f"journal:{journal.resolve()}"))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 12 and states.count("FAIL") == 1
    assert all(study.trials[n].params == p for n, p in before.items())
    cfg = json.loads((tmp_path / "hyperparams" / "j" / "ETHUSD.json").read_text())
    assert cfg["backends"]["naive"]["trials"] + cfg["backends"]["naive"]["pruned_trials"] == 12
    assert sweep("report", "j", "--out", tmp_path).exit_code == 0
