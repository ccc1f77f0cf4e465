"""What a study hands to selection (`StudyOutcome`), whatever the engine, and how it reaches the files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import optuna
import polars as pl
import pytest

from sweeper.engines import engine_for
from sweeper.engines.base import Engine
from sweeper.engines.local import OptunaEngine
from sweeper.errors import SweepError
from sweeper.objective import SymbolTask
from sweeper.search import StudyOutcome, outcome, storage_for, study_name
from sweeper.sweep import RunRequest, prepare, run, study_settings
from sweeper.workspace import RunPaths
from tests.helpers import SHARED_LAKE

REQUEST = {"symbols": ["ETHUSD"], "lake": str(SHARED_LAKE), "val_origins": 120, "test_origins": 40}


def test_a_backend_that_cannot_load_reaches_the_config_as_its_outcomes_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = OptunaEngine.run

    def run_or_fail(self: OptunaEngine, task: SymbolTask, backend: str, on_trial=None) -> optuna.Study:
        if backend == "drift":
            raise SweepError("drift weights not found")
        return real(self, task, backend, on_trial)

    monkeypatch.setattr(OptunaEngine, "run", run_or_fail)
    paths = RunPaths(tmp_path, "r")
    [result] = run(RunRequest(**REQUEST, backends=["naive", "drift"], trials=3), paths)
    assert result.backends["drift"].error == "drift weights not found" and result.backends["drift"].trials == 0
    config = json.loads(paths.config("ETHUSD").read_text())
    drift = config["backends"]["drift"]
    assert drift == {**drift, "params": None, "trials": 0, "pruned_trials": 0, "error": "drift weights not found"}
    assert "error" not in config["backends"]["naive"] and config["chosen"]["backend"] == "naive"
    assert set(pl.read_parquet(paths.trials)["backend"]) == {"naive"}  # a backend that never ran has no trials


def test_an_outcomes_pruned_count_equals_the_pruned_trials_in_trials_parquet(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path, "p")
    req = RunRequest(**REQUEST, backends=["naive", "drift"], trials=16)
    [result] = run(req, paths)
    trials = pl.read_parquet(paths.trials)
    config = json.loads(paths.config("ETHUSD").read_text())
    assert (trials["state"] == "PRUNED").sum() > 0  # the run prunes: the counts say something
    for backend in ("naive", "drift"):
        states = trials.filter(backend=backend)["state"]
        study = optuna.load_study(study_name=study_name("ETHUSD", backend), storage=storage_for(paths.storage_url()))
        found = outcome(study, prepare(req).tasks[0].spaces[backend], "crps")
        assert found.pruned == (states == "PRUNED").sum() == result.backends[backend].pruned
        assert found.complete == (states == "COMPLETE").sum() == result.backends[backend].trials
        assert config["backends"][backend]["pruned_trials"] == found.pruned
        assert found.params == result.backends[backend].params and found.error is None and found.front is None


def test_a_study_without_a_completed_trial_has_no_params_and_says_why(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    space = prepare(RunRequest(**REQUEST, backends=["naive"])).tasks[0].spaces["naive"]
    assert outcome(study, space, "crps") == StudyOutcome(error="no trial completed (1 of 1 failed)")


@pytest.mark.parametrize("engine", ["optuna", "jobs", "ray"])
def test_every_engine_is_an_engine_that_starts_nothing_until_entered(engine: str, tmp_path: Path) -> None:
    req = RunRequest(
        **REQUEST,
        backends=["naive"],
        engine="ray" if engine == "ray" else "optuna",
        jobs=2 if engine == "jobs" else 1,
    )
    prep, paths = prepare(req), RunPaths(tmp_path, "e")
    built = engine_for(req, study_settings(prep, paths), prep.tasks, paths.ray)
    assert isinstance(built, Engine) and built.settings == study_settings(prep, paths)
    assert not paths.results.exists()  # nothing written, no storage opened: the work happens in run


def test_jobs_fill_each_study_to_its_budget_in_run(tmp_path: Path) -> None:
    """`--jobs 2` on SQLite: both workers, started once, fill one study after the other to its exact budget."""
    paths, seen = RunPaths(tmp_path, "j"), set()
    req = RunRequest(**{**REQUEST, "symbols": ["ETHUSD", "BTCUSD"]}, freq="1d", backends=["naive", "drift"], trials=5)
    results = run(replace(req, jobs=2), paths, progress=lambda label, done, budget: seen.add((label, done, budget)))
    trials = pl.read_parquet(paths.trials)
    for symbol in ("ETHUSD", "BTCUSD"):
        for backend in ("naive", "drift"):
            rows = trials.filter(symbol=symbol, backend=backend)
            assert rows.height == 5 and set(rows["state"]) <= {"COMPLETE", "PRUNED"}
            assert (f"{symbol} {backend}", 5, 5) in seen  # the last tick of each study
    assert [r.symbol for r in results] == ["ETHUSD", "BTCUSD"] and all(r.chosen for r in results)
