"""The config record: every config a sweep writes reads back to the same file, schema 1 configs still load
and forecast, and a config that is not a record is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sweeper import load_config
from sweeper.data import load
from sweeper.errors import SweepError
from sweeper.record import SCHEMA_VERSION, Config
from tests.helpers import SHARED_LAKE, V1_CONFIG, bars_frame


def test_a_version_1_config_reads_and_writes_back_as_it_was() -> None:
    doc = json.loads(V1_CONFIG.read_text())
    config = Config.from_dict(doc)
    assert config.schema_version == 1 and config.selection is None and config.scale is None
    assert all(e.pruned_trials is None for e in config.backends.values())  # schema 1 did not count them
    assert config.to_dict() == doc
    assert json.dumps(config.to_dict()) == json.dumps(doc)  # the same keys in the same order


def test_a_version_1_config_still_loads_and_forecasts(sweep) -> None:
    config = Config.from_json(V1_CONFIG)
    assert Path(config.data.lake) == SHARED_LAKE  # its relative lake resolved from the folder above the file
    predictor = load_config(V1_CONFIG)
    series = load(SHARED_LAKE, ["SOLUSDT"], "1d")[0]
    f = predictor.forecast(bars_frame(series).head(config.data.rows - 30))
    assert f.point.shape == (3,) and np.isfinite(f.point).all()
    assert (f.quantiles[0.05] <= f.point).all() and (f.point <= f.quantiles[0.95]).all()
    r = sweep("forecast", "--config", V1_CONFIG, "--json")
    assert r.exit_code == 0, r.output
    assert [x["step"] for x in json.loads(r.stdout)["forecasts"]] == [1, 2, 3]


def test_every_config_a_run_writes_reads_back_to_the_same_file(sweep, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = sweep(
        "run", "--symbols", "BTCUSDT", "ETHUSDT", "--freq", "1d", "--horizon", "2", "--lake", SHARED_LAKE,
        "--trials", "3", "--val-origins", "40", "--test-origins", "12", "--run-id", "r", "--out", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    paths = sorted((out / "hyperparams" / "r").glob("*.json"))
    assert len(paths) == 2
    for path in paths:
        doc = json.loads(path.read_text())
        config = Config.from_json(path)
        assert config.schema_version == SCHEMA_VERSION and config.selection and config.scale
        assert config.to_dict() == doc
        assert config.key == (doc["symbol"], "1d", 2)
        assert config.chosen_candidate().backend == doc["chosen"]["backend"]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda d: d.pop("data"), "config has no 'data'"),
        (lambda d: d["baseline"].pop("draws"), "config has no 'draws'"),
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "upgrade"),
        (lambda d: d.update(horizon="three"), "does not hold a schema 1 record"),
    ],
    ids=["no-data", "no-draws", "newer-schema", "bad-horizon"],
)
def test_a_config_that_is_not_a_record_is_one_line_naming_the_file(change, said, sweep, tmp_path: Path) -> None:
    doc = json.loads(V1_CONFIG.read_text())
    change(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SweepError, match=said):
        Config.from_json(path)
    r = sweep("forecast", "--config", path, "--out", tmp_path)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert str(path) in r.stderr and said in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]  # nothing written


def test_a_config_file_that_is_no_json_object_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(SweepError, match=f"cannot read config {path}: not a JSON object"):
        Config.from_json(path)
