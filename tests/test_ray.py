"""The Ray Tune engine on a local 2-CPU Ray: same files, same form and the same objective as the Optuna engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import pytest

from sweeper.forecast import chunk_bounds
from sweeper.objective import Candidate, mean_scores, recorded_means
from sweeper.sweep import RunRequest, prepare
from tests.helpers import SHARED_LAKE, storage_of

pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time on a 2-core machine
SYMBOLS = ("BTCUSD", "ETHUSD")
COMMON = ["--lake", SHARED_LAKE, "--freq", "1d", "--backends", "naive", "--trials", 6, "--json"]
ORIGINS = ["--val-origins", 60, "--test-origins", 20]


def key_paths(doc: dict[str, Any], prefix: str = "") -> set[str]:
    """Every key path of a JSON document, e.g. backends.naive.validation.crps; ensemble weights are named
    after the winners, a result rather than the form, so they are left out."""
    out = set()
    for k, v in doc.items():
        path = f"{prefix}{k}"
        if path != "ensemble.weights":
            out.add(path)
            if isinstance(v, dict):
                out |= key_paths(v, path + ".")
    return out


def test_chunks_cover_every_origin_once() -> None:
    assert chunk_bounds(60) == [(0, 15), (15, 30), (30, 45), (45, 60)]
    assert chunk_bounds(2) == [(0, 1), (1, 2)]
    assert chunk_bounds(7)[-1][1] == 7


def test_optuna_search_keeps_the_optuna_trial_of_each_tune_trial_in_ot_trials(tmp_path: Path) -> None:
    """The one private use of Ray (`OptunaSearch._ot_trials`, behind `Searcher.asked`): each Tune trial's
    Optuna trial, whose records the Searcher writes as the Optuna engine does. No Ray needs to run."""
    from sweeper.engines.ray_tune import CHUNK, FAILED, MEAN, SCORE, Searcher
    from sweeper.search import Budget, StudySettings, open_study, storage_for
    from sweeper.space import AGGREGATION, load_space

    url, space = f"sqlite:///{tmp_path / 's.db'}", load_space("naive")
    study = open_study(StudySettings(url, ("crps",), Budget(3), 0), "ETHUSD", "naive")
    searcher = Searcher(
        4, space, metric=SCORE, mode="min", sampler=study.sampler, study_name=study.study_name, storage=storage_for(url)
    )
    ids = ("done", "stopped", "failed")
    for tune_id in ids:
        config = searcher.suggest(tune_id)
        asked = searcher.asked(tune_id)
        assert isinstance(asked, optuna.Trial) and asked.params == config
    searcher.on_trial_complete("done", {SCORE: 1.0, CHUNK: 4, AGGREGATION: "mean", f"{MEAN}crps": 1.0})
    searcher.on_trial_complete("stopped", {SCORE: 2.0, CHUNK: 1, AGGREGATION: "median"})
    searcher.on_trial_complete("failed", {SCORE: float("nan"), FAILED: "boom"})
    searcher.on_trial_complete("done", {SCORE: 3.0, CHUNK: 4, AGGREGATION: "median"})  # handed twice: no change
    done, stopped, failed = (study.trials[searcher.asked(i).number] for i in ids)
    assert done.state.name == "COMPLETE" and done.value == 1.0 and recorded_means(done) == {"crps": 1.0}
    assert space.values(done.params)[AGGREGATION] == "mean"
    assert stopped.state.name == "PRUNED" and stopped.value == 2.0 and stopped.intermediate_values == {1: 2.0}
    assert space.values(stopped.params)[AGGREGATION] == "median"
    assert failed.state.name == "FAIL" and AGGREGATION not in failed.params


def test_ray_sweep_matches_the_optuna_engine_in_form(tmp_path: Path, sweep) -> None:
    runs = {}
    for engine, extra in (("optuna", []), ("ray", ["--workers", 2])):
        result = sweep(
            "run",
            "--symbols",
            *SYMBOLS,
            *COMMON,
            *ORIGINS,
            "--engine",
            engine,
            *extra,
            "--out",
            tmp_path,
            "--run-id",
            engine,
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["run_id"] == engine  # stdout holds nothing but the JSON summary
        runs[engine] = tmp_path / "results" / engine
    ray_run, optuna_run = runs["ray"], runs["optuna"]
    for sym in SYMBOLS:
        a = json.loads((tmp_path / "hyperparams" / "ray" / f"{sym}.json").read_text())
        b = json.loads((tmp_path / "hyperparams" / "optuna" / f"{sym}.json").read_text())
        assert key_paths(a) == key_paths(b)
        assert a["backends"]["naive"]["trials"] >= 1
    trials = pl.read_parquet(ray_run / "trials.parquet")
    assert trials.columns == pl.read_parquet(optuna_run / "trials.parquet").columns
    assert trials.height == 2 * 6 and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert (ray_run / "ray").is_dir() and list((ray_run / "cache").glob("*.npy"))
    assert json.loads((ray_run / "manifest.json").read_text())["request"]["engine"] == "ray"

    # a complete Ray trial has exactly the Optuna engine's objective value and validation means
    task = prepare(RunRequest(list(SYMBOLS), lake=str(SHARED_LAKE), freq="1d", val_origins=60, test_origins=20)).tasks[
        1
    ]
    study = optuna.load_study(study_name="ETHUSD--naive", storage=storage_of(ray_run / "study.journal"))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done
    for t in done:
        means = mean_scores(task.scores(Candidate("naive", task.spaces["naive"].values(t.params)), "val"))
        assert t.value == means["crps"]
        recorded = recorded_means(t)
        assert set(recorded) == set(means)
        del recorded["latency_s"], means["latency_s"]  # wall time
        np.testing.assert_equal(recorded, means)  # exactly equal, NaN included
    for t in study.trials:  # a trial stopped early keeps the running mean it was stopped at
        if t.state.name == "PRUNED":
            assert t.value == t.intermediate_values[max(t.intermediate_values)]


def test_ray_only_options_need_the_ray_engine(sweep, tmp_path: Path) -> None:
    result = sweep("run", "--symbols", "ETHUSD", *COMMON, "--workers", 2, "--out", tmp_path)
    assert result.exit_code == 2 and "--engine ray" in result.output
    result = sweep("run", "--symbols", "ETHUSD", *COMMON, "--engine", "ray", "--jobs", 2, "--out", tmp_path)
    assert result.exit_code == 2 and "--workers" in result.output
    assert not (tmp_path / "results").exists()
