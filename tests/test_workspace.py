"""The workspace under --out: its files name paths that resolve from any working directory."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from sweeper.errors import SweepError
from sweeper.record import Config
from sweeper.workspace import Workspace
from tests.helpers import V1_CONFIG


def test_runs_show_report_promote_eval_and_forecast_work_from_another_directory(
    small_lake: Path, tmp_path: Path, sweep, monkeypatch
) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(here)
    assert sweep("models", "init", "toto", "--preset", "tiny", "--out", "ck").exit_code == 0
    shutil.copytree(Path(__file__).parents[1] / "search_spaces" / "cpu-tiny", here / "spaces")  # relative --spaces
    lake = os.path.relpath(small_lake, here)
    args = ("--lake", lake, "--out", "out", "--symbols", "ETHUSD", "--backends", "naive", "toto")
    ran = sweep(
        "run",
        *args,
        "--checkpoint",
        "toto=ck",
        "--spaces",
        "spaces",
        "--trials",
        2,
        "--val-origins",
        30,
        "--test-origins",
        10,
        "--run-id",
        "r",
    )
    assert ran.exit_code == 0, ran.output
    config = json.loads((here / "out" / "hyperparams" / "r" / "ETHUSD.json").read_text())
    assert config["backends"]["toto"]["checkpoint"] == str(here / "ck")
    manifest = json.loads((here / "out" / "results" / "r" / "manifest.json").read_text())
    assert manifest["request"]["lake"] == str(small_lake) and manifest["request"]["checkpoints"] == {
        "toto": str(here / "ck")
    }

    monkeypatch.chdir(elsewhere)
    out = str(here / "out")
    for command in (("runs", "--out", out), ("show", "r", "--out", out), ("report", "r", "--out", out)):
        result = sweep(*command)
        assert result.exit_code == 0, (command, result.output)
    assert (here / "out" / "results" / "r" / "report.html").is_file()
    assert sweep("promote", "r", "--out", out, "--force").exit_code == 0
    evaluated = sweep("eval", "--out", out)
    assert evaluated.exit_code == 0, evaluated.output
    forecast = sweep("forecast", "--symbols", "ETHUSD", "--out", out)
    assert forecast.exit_code == 0, forecast.output
    assert not any(elsewhere.iterdir())


def test_relative_paths_of_older_configs_resolve_from_the_folder_above_them(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ck").mkdir()
    config_path = Workspace(tmp_path / "out").run("old").config("SOLUSDT")
    config_path.parent.mkdir(parents=True)
    old = json.loads(V1_CONFIG.read_text())
    old["backends"]["naive"]["checkpoint"] = "ck"  # as older versions recorded a checkpoint: relative
    old["baseline"]["checkpoint"] = "Datadog/Toto-Open-Base-1.0"  # a hub id stays as it is
    old["data"]["lake"] = "demo"
    config_path.write_text(json.dumps(old))
    monkeypatch.chdir(config_path.parent)
    config = Config.from_json(config_path)
    assert config.backends["naive"].source.checkpoint == str(tmp_path / "ck")  # type: ignore[union-attr]
    assert config.chosen is not None and config.chosen.source.checkpoint is None
    assert config.baseline.source.checkpoint == "Datadog/Toto-Open-Base-1.0" and config.data.lake == "demo"


def test_model_folders_are_named_by_the_workspace_and_never_escape_it(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    assert ws.model("marketgpt", "tiny-1h") == tmp_path / "models" / "marketgpt" / "tiny-1h"
    for bad in ("../x", "a/b", ""):
        with pytest.raises(SweepError, match="model name"):
            ws.model("toto", bad)
