"""`sweep export mlflow` writes a real local MLflow store that MLflow's own client reads back."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from mlflow.tracking import MlflowClient

from tests.helpers import SHARED_LAKE


def test_export_is_read_back_through_mlflows_client(tmp_path: Path, sweep) -> None:
    args = ["--symbols", "ETHUSD", "--lake", SHARED_LAKE, "--freq", "1d", "--trials", 5, "--val-origins", 60]
    r = sweep("run", *args, "--test-origins", 20, "--backends", "naive", "drift", "--run-id", "r1", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    (tmp_path / "results" / "r1" / "report.html").write_text("<html>report</html>")  # as `sweep report` leaves it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = sweep("export", "mlflow", "r1", "--tracking-uri", uri, "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    made = {m["name"]: m["mlflow_run_id"] for m in json.loads(r.stdout)["mlflow_runs"]}

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("sweep")
    runs = {x.data.tags["mlflow.runName"]: x for x in client.search_runs([exp.experiment_id])}
    assert set(runs) == set(made) == {"r1/ETHUSD", "r1/ETHUSD/naive", "r1/ETHUSD/drift"}
    assert {n: x.info.run_id for n, x in runs.items()} == made
    cfg = json.loads((tmp_path / "hyperparams" / "r1" / "ETHUSD.json").read_text())
    parent = runs["r1/ETHUSD"]
    assert parent.data.tags["chosen"] == cfg["chosen"]["backend"] and parent.data.tags["freq"] == "1d"
    assert parent.data.params == {k: str(v) for k, v in cfg["chosen"]["params"].items()} | {
        f"ensemble_weight.{k}": str(v) for k, v in cfg["ensemble"]["weights"].items()
    }
    chosen = cfg["backends"][cfg["chosen"]["backend"]]
    assert parent.data.metrics["test_crps"] == chosen["test"]["crps"]
    assert parent.data.metrics["ensemble_val_crps"] == cfg["ensemble"]["validation"]["crps"]
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id)) == ["ETHUSD.json", "report.html"]
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()  # beside the store, not in the cwd
    local = client.download_artifacts(parent.info.run_id, "ETHUSD.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == cfg

    study = runs["r1/ETHUSD/drift"]
    assert study.data.tags["mlflow.parentRunId"] == parent.info.run_id and study.data.tags["metric"] == "crps"
    assert study.data.params["context_length"] == str(cfg["backends"]["drift"]["params"]["context_length"])
    assert study.data.metrics["val_crps"] == cfg["backends"]["drift"]["validation"]["crps"]
    history = client.get_metric_history(study.info.run_id, "trial_crps")
    trials = pl.read_parquet(tmp_path / "results" / "r1" / "trials.parquet").filter(backend="drift", state="COMPLETE")
    trials = trials.sort("number")
    assert [m.step for m in history] == trials["number"].to_list()
    assert [m.value for m in history] == trials["value"].to_list()
    assert study.info.status == "FINISHED"

    r = sweep("export", "mlflow", "r1", "--tracking-uri", uri, "--out", tmp_path)
    assert r.exit_code == 2 and "already in MLflow experiment" in r.stderr
