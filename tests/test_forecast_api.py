"""A config's live forecast is the sweep's forecast; promoted configs are keyed by symbol, freq and horizon."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweeper import load_config
from sweeper.data import load
from sweeper.errors import SweepError
from sweeper.metrics import LEVELS
from sweeper.store import level_column
from tests.helpers import SHARED_LAKE, bars_frame

RUN = ["--lake", SHARED_LAKE, "--trials", 4, "--val-origins", 60, "--test-origins", 20]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1d run at horizon 3 (SOLUSDT's ensemble mixes several baselines) and a 1h run."""
    from typer.testing import CliRunner

    from sweeper.cli import app, expand_list_options

    out = tmp_path_factory.mktemp("out")
    runner = CliRunner()
    daily = ["--symbols", "BTCUSDT", "SOLUSDT", "--freq", "1d", "--horizon", 3]
    for run_id, extra in (("daily", daily), ("hourly", ["--symbols", "BTCUSDT", "--freq", "1h"])):
        args = expand_list_options([str(a) for a in ["run", *RUN, *extra, "--run-id", run_id, "--out", out]])
        r = runner.invoke(app, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
    return out


def _recorded(out: Path, run_id: str, symbol: str, candidate: str) -> pl.DataFrame:
    origins = pl.read_parquet(out / "results" / run_id / "origins.parquet")
    return origins.filter(symbol=symbol, candidate=candidate).sort("origin_row")


@pytest.mark.parametrize("ensemble", [False, True], ids=["chosen", "ensemble"])
def test_live_forecast_equals_the_sweeps_recorded_forecast(swept: Path, ensemble: bool) -> None:
    config = swept / "hyperparams" / "daily" / "SOLUSDT.json"
    predictor = load_config(config, ensemble=ensemble)
    cfg = json.loads(config.read_text())
    assert len(cfg["ensemble"]["weights"]) >= 2  # a real mixture, not one member
    recorded = _recorded(swept, "daily", "SOLUSDT", "ensemble" if ensemble else cfg["chosen"]["backend"])
    series = load(SHARED_LAKE, ["SOLUSDT"], "1d")[0]
    bars = bars_frame(series)
    # the first validation and the last test origin; the second as a pandas frame with a ts index
    for row, frame in ((recorded.row(0, named=True), "polars"), (recorded.row(-1, named=True), "pandas")):
        past = bars.head(row["origin_row"])
        f = predictor.forecast(past.to_pandas().set_index("ts") if frame == "pandas" else past, draws=True)
        assert f.last_ts == series.ts[row["origin_row"] - 1]
        np.testing.assert_array_equal(f.point, row["point"])
        for q in LEVELS:
            np.testing.assert_array_equal(f.quantiles[q], row[level_column(q)])
        assert f.draws is not None and f.draws.shape[1] == 3
        np.testing.assert_array_equal(f.ts, series.ts[row["origin_row"] : row["origin_row"] + 3])
    # a forecast of other bars is another forecast
    other = predictor.forecast(bars.head(recorded.row(0, named=True)["origin_row"] - 1))
    assert not np.array_equal(other.point, recorded.row(0, named=True)["point"])


def test_origins_table_holds_utc_times_actuals_points_and_quantiles(swept: Path) -> None:
    origins = pl.read_parquet(swept / "results" / "daily" / "origins.parquet")
    assert origins.schema["origin_ts"] == pl.Datetime("us", "UTC")
    assert origins.schema["target_ts"].inner == pl.Datetime("us", "UTC")  # type: ignore[union-attr]
    row = origins.filter(symbol="BTCUSDT").row(0, named=True)
    assert len(row["actual"]) == len(row["point"]) == len(row["q05"]) == 3
    assert row["target_ts"][0] == row["origin_ts"]  # the first target bar is the origin
    q = np.array([row[level_column(x)] for x in LEVELS])
    assert (np.diff(q, axis=0) >= 0).all()  # quantiles ordered per bar
    series = load(SHARED_LAKE, ["BTCUSDT"], "1d")[0]
    np.testing.assert_array_equal(row["actual"], series.close[row["origin_row"] : row["origin_row"] + 3])


def test_best_holds_one_config_per_symbol_freq_and_horizon(swept: Path, sweep) -> None:
    out = swept
    for run_id in ("daily", "hourly"):
        r = sweep("promote", run_id, "--out", out)
        assert r.exit_code == 0 and "no current best" in r.stdout, r.output
    best = out / "hyperparams" / "best" / "BTCUSDT"
    assert sorted(p.name for p in best.iterdir()) == ["1d-h3.json", "1h-h1.json"]
    assert json.loads((best / "1d-h3.json").read_text())["run_id"] == "daily"
    assert json.loads((best / "1h-h1.json").read_text())["run_id"] == "hourly"
    r = sweep("eval", "--check", "--out", out)
    assert r.exit_code == 0, r.output
    report = max((out / "results" / "eval").glob("*.md")).read_text()
    assert report.count("| BTCUSDT | crps |") == 2
    # forecast from the promoted configs: two of them, so --freq picks
    r = sweep("forecast", "--symbols", "BTCUSDT", "--out", out)
    assert r.exit_code == 2 and "1d h3, 1h h1" in r.stderr
    r = sweep("forecast", "--symbols", "BTCUSDT", "--freq", "1h", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    (got,) = json.loads(r.stdout)["forecasts"]  # one bar: horizon 1
    assert got["freq"] == "1h" and got["step"] == 1 and got["q05"] <= got["point"] <= got["q95"]
    assert got["ts"] > got["last_ts"].removesuffix("Z")
    target = out / "fc.parquet"
    r = sweep("forecast", "--symbols", "BTCUSDT", "--freq", "1d", "--out", out, "--write", target)
    assert r.exit_code == 0 and pl.read_parquet(target).height == 3


def test_older_best_layout_is_read_and_replaced_under_its_key(swept: Path, sweep, tmp_path: Path) -> None:
    legacy = tmp_path / "hyperparams" / "best" / "BTCUSDT.json"
    legacy.parent.mkdir(parents=True)
    cfg = json.loads((swept / "hyperparams" / "hourly" / "BTCUSDT.json").read_text())
    legacy.write_text(json.dumps(cfg))
    r = sweep("forecast", "--symbols", "BTCUSDT", "--out", tmp_path, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["forecasts"][0]["freq"] == "1h", r.output
    # the same run again competes with the legacy config (same key): within noise, refused
    (tmp_path / "hyperparams" / "hourly").mkdir()
    (tmp_path / "hyperparams" / "hourly" / "BTCUSDT.json").write_text(json.dumps(cfg))
    r = sweep("promote", "hourly", "--out", tmp_path, "--lake", SHARED_LAKE)
    assert "refused" in r.stdout and "within noise" in r.stdout, r.output
    r = sweep("promote", "hourly", "--out", tmp_path, "--lake", SHARED_LAKE, "--force")
    assert r.exit_code == 0 and not legacy.exists()
    assert (tmp_path / "hyperparams" / "best" / "BTCUSDT" / "1h-h1.json").is_file()


def test_forecast_of_too_few_bars_is_one_line(swept: Path) -> None:
    predictor = load_config(swept / "hyperparams" / "hourly" / "BTCUSDT.json")
    series = load(SHARED_LAKE, ["BTCUSDT"], "1h")[0]
    with pytest.raises(SweepError, match="does not fit"):
        predictor.forecast(bars_frame(series).head(5))


def test_a_fine_tuned_config_without_recorded_weights_is_refused(swept: Path, tmp_path: Path) -> None:
    config = json.loads((swept / "hyperparams" / "hourly" / "BTCUSDT.json").read_text())
    config["chosen"]["params"]["ft_steps"] = 20  # as a sweep writes a fine-tuned winner's knobs
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SweepError, match="naive has fine-tuning knobs but no recorded weights"):
        load_config(path)


def test_live_forecast_of_the_naive_fallback_equals_the_recorded_one(sweep, tmp_path: Path) -> None:
    """Naive not searched and nothing beats it: the chosen config is the naive defaults ("baseline")."""
    args = ["--symbols", "ETHUSD", "--freq", "1d", "--backends", "seasonal_naive", "--run-id", "fb"]
    r = sweep("run", *RUN, *args, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    config = tmp_path / "hyperparams" / "fb" / "ETHUSD.json"
    cfg = json.loads(config.read_text())
    assert "naive" not in cfg["backends"] and cfg["chosen"]["backend"] == "naive"
    row = _recorded(tmp_path, "fb", "ETHUSD", "baseline").row(-1, named=True)
    f = load_config(config).forecast(bars_frame(load(SHARED_LAKE, ["ETHUSD"], "1d")[0]).head(row["origin_row"]))
    assert f.candidate == "naive"
    np.testing.assert_array_equal(f.point, row["point"])
    np.testing.assert_array_equal(f.quantiles[0.5], row["q50"])
    # `sweep show` marks the naive defaults as the chosen candidate (it marked none before the record owned it)
    r = sweep("show", "fb", "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["candidates"]
    assert [x["candidate"] for x in rows if x["chosen"]] == ["naive (defaults)"]
