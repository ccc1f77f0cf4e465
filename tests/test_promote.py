"""Promote only what is better beyond noise; eval --check catches a tampered promotion; atomic writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from sweeper import atomic, metric
from sweeper.promote import history
from tests.helpers import SHARED_LAKE

RUN = [
    "--lake",
    SHARED_LAKE,
    "--freq",
    "1d",
    "--symbols",
    "BTCUSD",
    "--trials",
    3,
    "--val-origins",
    150,
    "--test-origins",
    120,
]


@pytest.fixture
def out(tmp_path: Path, sweep) -> Path:
    """Two runs: `bad` searches only seasonal_naive, `good` only naive (clearly better on BTCUSD daily)."""
    for run_id, backend in (("bad", "seasonal_naive"), ("good", "naive")):  # `best`: bad keeps seasonal_naive
        r = sweep("run", *RUN, "--backends", backend, "--select", "best", "--run-id", run_id, "--out", tmp_path)
        assert r.exit_code == 0, r.output
    return tmp_path


def best(out: Path) -> dict:
    return json.loads((out / "hyperparams" / "best" / "BTCUSD" / "1d-h1.json").read_text())


def test_promote_accepts_better_refuses_worse_and_equal(out: Path, sweep) -> None:
    r = sweep("promote", "bad", "--out", out)
    assert r.exit_code == 0 and "no current best" in r.stdout
    assert best(out)["run_id"] == "bad"
    # dry run: says it would promote, writes nothing
    r = sweep("promote", "good", "--out", out, "--dry-run")
    assert "would promote" in r.stdout and best(out)["run_id"] == "bad"
    r = sweep("promote", "good", "--out", out)
    assert "promoted" in r.stdout and "better beyond noise" in r.stdout
    assert best(out)["run_id"] == "good" and best(out)["promotion"]["previous_run_id"] == "bad"
    # worse: refused, best unchanged
    r = sweep("promote", "bad", "--out", out)
    assert "refused" in r.stdout and "worse" in r.stdout and best(out)["run_id"] == "good"
    # equal (the same run again): within noise, refused
    r = sweep("promote", "good", "--out", out)
    assert "refused" in r.stdout and "within noise" in r.stdout
    # --force overrides
    r = sweep("promote", "bad", "--out", out, "--force")
    assert "forced (worse)" in r.stdout and best(out)["run_id"] == "bad"
    assert [h["run_id"] for h in history(out)] == ["bad", "good", "bad"]


def test_eval_check_passes_untouched_and_fails_tampered(out: Path, sweep) -> None:
    assert sweep("promote", "good", "--out", out).exit_code == 0
    r = sweep("eval", "--check", "--out", out)
    assert r.exit_code == 0, r.output
    reports = sorted((out / "results" / "eval").glob("*.json"))
    assert reports and reports[0].with_suffix(".md").is_file()
    for m in metric.NAMES:  # every metric is printed, latency as not checked
        assert m in r.stdout
    assert "not checked" in r.stdout
    cfg = best(out)
    chosen = cfg["chosen"]["backend"]
    cfg["backends"][chosen]["test"]["mse"] *= 0.95  # claim a better score than the config really has
    (out / "hyperparams" / "best" / "BTCUSD" / "1d-h1.json").write_text(json.dumps(cfg))
    r = sweep("eval", "--check", "--out", out)
    assert r.exit_code == 1
    flagged = [line for line in r.stdout.splitlines() if "REGRESSION" in line]
    assert len(flagged) == 1 and "mse" in flagged[0]  # the row that fails is printed, and only it
    # without --check the table still shows it, but the exit code is 0
    assert sweep("eval", "--out", out).exit_code == 0


def test_eval_refuses_configs_scored_under_older_definitions(out: Path, sweep) -> None:
    assert sweep("promote", "good", "--out", out).exit_code == 0
    cfg = best(out)
    cfg["schema_version"] = 1
    (out / "hyperparams" / "best" / "BTCUSD.json").write_text(json.dumps(cfg))
    r = sweep("eval", "--check", "--out", out)
    assert r.exit_code == 2 and "config schema 1" in " ".join(r.stdout.split())


def test_eval_missing_data_is_an_error_not_a_pass(out: Path, sweep, tmp_path: Path) -> None:
    assert sweep("promote", "good", "--out", out).exit_code == 0
    empty = tmp_path / "empty-lake"
    empty.mkdir()
    r = sweep("eval", "--check", "--out", out, "--lake", empty)
    assert r.exit_code == 2 and "not found in lake" in r.stdout


def test_promote_unknown_run_is_clean_error(tmp_path: Path, sweep) -> None:
    r = sweep("promote", "nope", "--out", tmp_path)
    assert r.exit_code == 2 and "run nope has no configs" in r.stderr


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "cfg.json"
    atomic.write_json(target, {"v": 1})

    def boom(*_a, **_k):
        raise KeyboardInterrupt  # the process is interrupted between writing and renaming

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.json"]  # no temp file left behind
    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(tmp_path / "new.json") as tmp:
        tmp.write_text('{"half":')
        raise KeyboardInterrupt
    assert not (tmp_path / "new.json").exists()


def test_runs_and_show_list_what_the_runs_wrote(out: Path, sweep) -> None:
    r = sweep("runs", "--out", out)
    assert r.exit_code == 0
    assert "bad" in r.stdout and "good" in r.stdout and "BTCUSD:naive" in r.stdout
    assert "BTCUSD:seasonal_naive" in r.stdout and r.stdout.count("complete") == 2
    r = sweep("show", "good", "--out", out)
    cfg = json.loads((out / "hyperparams" / "good" / "BTCUSD.json").read_text())
    assert r.exit_code == 0 and "naive *" in r.stdout  # the chosen one is starred
    assert f"{cfg['backends']['naive']['validation']['crps']:.4g}" in r.stdout
    r = sweep("show", "nope", "--out", out)
    assert r.exit_code == 2 and "run nope has no configs" in r.stderr


def test_promotion_counts_reuse_of_test_origins_and_refuses_past_the_limit(out: Path, sweep) -> None:
    assert sweep("promote", "bad", "--out", out).exit_code == 0
    r = sweep("promote", "good", "--out", out, "--max-reuse", 1)
    assert "promoted" in r.stdout and "used by 0 earlier promotions (limit 1)" in " ".join(r.stdout.split())
    arena = history(out)[-1]["arena"]
    assert arena["origins"] == "candidate test" and arena["count"] == 120 and arena["earlier_decisions"] == 0
    # bad and good share their test origins: they have now decided one promotion, the limit
    r = sweep("promote", "bad", "--out", out, "--max-reuse", 1)
    assert "refused" in r.stdout and "already decided 1 promotions (limit 1)" in " ".join(r.stdout.split())
    assert best(out)["run_id"] == "good" and len(history(out)) == 2


def test_promotion_decides_on_fresh_origins_once_the_lake_has_grown(small_lake: Path, sweep, tmp_path: Path) -> None:
    old = tmp_path / "old-lake"
    shutil.copytree(small_lake, old)
    for month in ("07", "08", "09", "10"):  # the runs see BTCUSD daily up to June 2019
        shutil.rmtree(old / "asset_class=crypto/freq=1d/symbol=BTCUSD/year=2019" / f"month={month}")
    run = [a if a != SHARED_LAKE else old for a in RUN]
    for run_id, backend in (("bad", "seasonal_naive"), ("good", "naive")):
        r = sweep("run", *run, "--backends", backend, "--select", "best", "--run-id", run_id, "--out", tmp_path)
        assert r.exit_code == 0, r.output
    assert sweep("promote", "bad", "--out", tmp_path, "--lake", small_lake).exit_code == 0
    r = sweep("promote", "good", "--out", tmp_path, "--lake", small_lake)
    assert r.exit_code == 0 and "after both test windows" in " ".join(r.stdout.split())
    arena = history(tmp_path)[-1]["arena"]
    cfg = json.loads((tmp_path / "hyperparams" / "good" / "BTCUSD.json").read_text())
    assert arena["origins"] == "fresh" and arena["first_ts"] > cfg["protocol"]["test_origins"]["last_ts"]
    assert arena["last_ts"].startswith("2019-10-17") and arena["count"] >= 100
    # a lake whose recorded bars changed is an error, not a comparison on other data
    part = next((small_lake / "asset_class=crypto/freq=1d/symbol=BTCUSD/year=2016/month=03").glob("*.parquet"))
    frame = pl.read_parquet(part)
    frame.with_columns(pl.col("close") * 1.01, pl.col("high") * 1.01).write_parquet(part)
    r = sweep("promote", "good", "--out", tmp_path, "--lake", small_lake)
    assert r.exit_code == 2 and "data changed" in r.stderr
