"""Studies read well in Optuna's own tools: metric names, study attributes, one attribute per metric,
numeric choices searched in order; trials.parquet has typed knob columns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import polars as pl
import pytest

from sweeper.space import ORDERED, load_space
from tests.helpers import SHARED_LAKE, storage_of

OPTUNA = Path(sys.executable).with_name("optuna")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from typer.testing import CliRunner

    from sweeper.cli import app, expand_list_options

    out = tmp_path_factory.mktemp("out")
    args = ["run", "--symbols", "BTCUSDT", "--lake", SHARED_LAKE, "--freq", "1d", "--trials", 8]
    args += ["--val-origins", 60, "--test-origins", 20, "--backends", "naive", "seasonal_naive", "--run-id", "st"]
    r = CliRunner().invoke(app, expand_list_options([*map(str, args), "--out", str(out)]), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out / "results" / "st"


def _optuna(run: Path, *args: str) -> list[dict]:
    """The Optuna CLI on the run's journal file, as the README tells users to call it."""
    storage = ["--storage", str(run / "study.journal"), "--storage-class", "JournalFileBackend"]
    done = subprocess.run([str(OPTUNA), *args, *storage, "-f", "json"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_optuna_cli_shows_metric_names_and_study_attributes(run: Path) -> None:
    studies = {s["name"]: s for s in _optuna(run, "studies")}
    attrs = studies["BTCUSDT--seasonal_naive"]["user_attrs"]
    assert attrs == {
        "run": "st",
        "symbol": "BTCUSDT",
        "freq": "1d",
        "horizon": 1,
        "metric": "crps",
        "lake": str(SHARED_LAKE.resolve()),
        "backend": "seasonal_naive",
    }
    best = _optuna(run, "best-trial", "--study-name", "BTCUSDT--naive")
    assert set(best["value"]) == {"crps"}  # the objective by its name, not "Objective 0"
    assert best["user_attrs"]["val_crps"] == best["value"]["crps"]  # one attribute per metric
    assert {"val_mae", "val_msis", "val_directional_accuracy", "val_latency_s"} <= set(best["user_attrs"])
    assert "context_length_index" in best["params"]  # searched in order, by its index


def test_trials_table_has_one_typed_column_per_knob_with_real_values(run: Path) -> None:
    trials = pl.read_parquet(run / "trials.parquet")
    assert trials.schema["params_context_length"] == pl.Int64 and trials.schema["params_season"] == pl.Int64
    assert trials.schema["params_aggregation"] == pl.String and trials.schema["params_num_samples"] == pl.Int64
    assert trials.schema["datetime_start"] == pl.Datetime("us", "UTC") and trials.schema["prune_step"] == pl.Int64
    seasonal = trials.filter(backend="seasonal_naive")
    assert set(seasonal["params_season"]) <= {5, 7, 24}
    assert (seasonal["prune_step"].is_null() == (seasonal["state"] != "PRUNED")).all()  # set for pruned trials only
    assert set(seasonal["params_context_length"]) <= {64, 128, 256, 512}
    assert trials.filter(backend="naive")["params_season"].is_null().all()
    study = optuna.load_study(study_name="BTCUSDT--seasonal_naive", storage=storage_of(run / "study.journal"))
    space = load_space("seasonal_naive")
    by_number = {t.number: space.values(t.params) for t in study.trials}
    for row in seasonal.iter_rows(named=True):
        assert by_number[row["number"]]["season"] == row["params_season"]
        assert row["val_crps"] == row["value"] or row["state"] == "PRUNED"  # a pruned trial has no means


def test_numeric_choices_are_searched_in_order(tmp_path: Path) -> None:
    (tmp_path / "naive.yaml").write_text(
        "backend: naive\nparams:\n"
        "  num_samples: {type: categorical, choices: [64, 32, 128, 96], default: 64}\n"
        "  aggregation: {type: categorical, choices: [mean, median]}\n"
        "  context_length: {type: categorical, choices: [16, 64, 32, 128], default: 32}\n"
    )
    space = load_space("naive", tmp_path)
    ns, ctx, agg = (space.params[k] for k in ("num_samples", "context_length", "aggregation"))
    assert (ns.type, ns.low, ns.high, ns.step) == ("int", 32, 128, 32)  # evenly spaced: an int with a step
    assert ctx.type == ORDERED and ctx.choices == (16, 32, 64, 128)  # otherwise an index, sorted
    assert isinstance(space.distributions()["context_length_index"], optuna.distributions.IntDistribution)
    assert agg.type == "categorical" and space.max_samples == 128 and space.max_context == 128
    assert space.values(space.optuna_params({"num_samples": 96, "aggregation": "mean", "context_length": 64})) == {
        "num_samples": 96,
        "aggregation": "mean",
        "context_length": 64,
    }
