"""Multi-fidelity search and draws as needed: pruned trials pay less, finalists see every origin, extended
draws are the first n of one larger pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest

from sweeper.cache import ForecastCache
from sweeper.forecast import Forecaster
from sweeper.objective import Candidate, objective
from sweeper.sweep import RunRequest, prepare
from tests.helpers import SHARED_LAKE

SMALL = ["--val-origins", "120", "--test-origins", "40"]


@pytest.fixture
def task(tmp_path: Path):
    req = RunRequest(
        symbols=["BTCUSDT"], lake=str(SHARED_LAKE), freq="1h", backends=["naive"], val_origins=200, test_origins=40
    )
    return prepare(req, ForecastCache(tmp_path / "cache")).tasks[0]


def _trial(tmp_path: Path, task, params: dict) -> optuna.Trial:
    """A trial of a study in the run's SQLite storage, with these knobs."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="t", load_if_exists=True)
    study.enqueue_trial(task.spaces["naive"].optuna_params(params))
    return study.ask()


def test_a_pruned_trial_makes_fewer_model_calls_than_an_unpruned_one(tmp_path: Path, task) -> None:
    fc, chunks = task.forecaster, len(task.chunks("val"))
    base = {"num_samples": 64, "aggregation": "median", "context_length": 64}
    stop_at_first = _trial(tmp_path, task, base)
    steps: list[int] = []
    with pytest.raises(optuna.TrialPruned):
        objective(stop_at_first, task, "naive", ("crps",), lambda step, _value: steps.append(step) or True)
    assert steps == [1] and fc.model_calls == 1  # one chunk forecast, the other chunks never
    full = _trial(tmp_path, task, {**base, "context_length": 128})
    value = objective(full, task, "naive", ("crps",), lambda _step, _value: False)
    assert fc.model_calls == 1 + chunks
    # a complete trial is valued on every validation origin: the same number as scoring them all at once
    params = task.spaces["naive"].values(full.storage.get_trial(full._trial_id).params)  # with its aggregation
    assert value == pytest.approx(float(np.mean(task.scores(Candidate("naive", params), "val")["crps"])))
    # a later trial with the pruned trial's model knobs continues where it stopped: only the missing chunks
    objective(_trial(tmp_path, task, {**base, "aggregation": "mean"}), task, "naive", ("crps",), None)
    assert fc.model_calls == 1 + chunks + (chunks - 1)


def test_extended_draws_equal_the_first_n_of_one_larger_pass(tmp_path: Path, task) -> None:
    knobs = {"aggregation": "median", "context_length": 64}
    fc = task.forecaster
    few = fc.samples(task.series, task.plan, "val", "naive", knobs, 40).samples
    calls = fc.model_calls
    more = fc.samples(task.series, task.plan, "val", "naive", knobs, 300).samples
    assert fc.model_calls == 2 * calls  # extended, once per chunk
    held = [np.load(f).shape[1] for f in (tmp_path / "cache").glob("*.npy")]
    assert held == [320] * len(task.chunks("val"))  # 64 asked first (two blocks of 32), then up to 10 blocks
    np.testing.assert_array_equal(more[:, :40], few)
    # another cache drawing 300 at once from the start: the very same draws
    fresh = Forecaster(ForecastCache(tmp_path / "other"), seed=fc.seed)
    np.testing.assert_array_equal(fresh.samples(task.series, task.plan, "val", "naive", knobs, 300).samples, more)


def test_finalists_are_compared_on_the_same_validation_origins(tmp_path: Path, sweep) -> None:
    r = sweep("run", "--symbols", "ETHUSD", "--lake", SHARED_LAKE, "--backends", "naive", "drift",
              "--trials", 16, "--run-id", "f", "--out", tmp_path, *SMALL)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "pruned" in r.output
    run = tmp_path / "results" / "f"
    trials = pl.read_parquet(run / "trials.parquet")
    assert (trials["state"] == "PRUNED").sum() > 0
    val = pl.read_parquet(run / "origins.parquet").filter(split="val")
    origins = {c: val.filter(candidate=c)["origin_ts"].to_list() for c in val["candidate"].unique()}
    assert len(origins) >= 3 and all(o == origins["naive"] for o in origins.values()) and len(origins["naive"]) == 120
    cfg = json.loads((tmp_path / "hyperparams" / "f" / "ETHUSD.json").read_text())
    for backend in ("naive", "drift"):
        rows = trials.filter(backend=backend)
        best = rows.filter(state="COMPLETE").sort("value").row(0, named=True)
        # the selected configuration is a complete trial, and its trial value is its mean over all 120 origins
        assert cfg["backends"][backend]["validation"]["crps"] == pytest.approx(best["value"])
        assert best["prune_step"] is None and (rows.filter(state="PRUNED")["prune_step"] < 4).all()


def test_no_prune_scores_every_trial_on_every_origin(tmp_path: Path, sweep) -> None:
    r = sweep("run", "--symbols", "ETHUSD", "--lake", SHARED_LAKE, "--backends", "naive", "--trials", 8,
              "--no-prune", "--run-id", "n", "--out", tmp_path, *SMALL)  # fmt: skip
    assert r.exit_code == 0, r.output
    trials = pl.read_parquet(tmp_path / "results" / "n" / "trials.parquet")
    assert trials["state"].to_list() == ["COMPLETE"] * 8 and trials["prune_step"].null_count() == 8
    manifest = json.loads((tmp_path / "results" / "n" / "manifest.json").read_text())
    assert manifest["request"]["prune"] is False


def test_one_model_pass_scores_every_aggregation_and_the_trial_keeps_the_best(tmp_path: Path, task) -> None:
    params = {"num_samples": 128, "aggregation": "mean", "context_length": 64}
    trial = _trial(tmp_path, task, params)
    objective(trial, task, "naive", ("crps",), None)
    assert task.forecaster.model_calls == len(task.chunks("val"))  # not once per aggregation
    recorded = task.spaces["naive"].values(trial.storage.get_trial(trial._trial_id).params)
    assert set(recorded) == set(task.spaces["naive"].params)  # every knob, as before
    mae = {
        a: float(np.mean(task.scores(Candidate("naive", {**params, "aggregation": a}), "val")["mae"]))
        for a in task.spaces["naive"].aggregations
    }
    assert recorded["aggregation"] == min(mae, key=mae.__getitem__) and len(set(mae.values())) > 1
