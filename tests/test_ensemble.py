"""Ensemble selection: exact mixture CRPS, weights, and never worse than its best member on validation."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper import metrics
from sweeper.ensemble import crps_terms, greedy, mixture, mixture_crps
from sweeper.objective import Candidate
from sweeper.sweep import RunRequest, prepare
from tests.helpers import SHARED_LAKE


def test_mixture_crps_decomposition_is_exact() -> None:
    rng = np.random.default_rng(3)
    from sweeper.objective import Forecast

    y = rng.normal(size=(40, 2))
    members = [
        Forecast(f"m{i}", np.sort(rng.normal(i * 0.3, 1 + i, size=(40, n, 2)), axis=1), np.zeros((40, 2)), 0.0)
        for i, n in enumerate((7, 20, 33))
    ]
    a, d = crps_terms(members, y)
    weights = {"m0": 0.2, "m1": 0.5, "m2": 0.3}
    samples, w, _, _ = mixture(members, weights)
    direct = metrics.crps(samples, y, w)
    np.testing.assert_allclose(mixture_crps(np.array([0.2, 0.5, 0.3]), a, d), direct, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def eth_members():
    req = RunRequest(
        symbols=["ETHUSDT"],
        lake=str(SHARED_LAKE),
        freq="1h",
        backends=["naive", "drift", "seasonal_naive"],
        val_origins=300,
        test_origins=100,
    )
    task = prepare(req).tasks[0]
    cands = [
        Candidate("naive", {"num_samples": 200, "aggregation": "median", "context_length": 64}),
        Candidate("drift", {"num_samples": 100, "aggregation": "mean", "context_length": 512}),
        Candidate("seasonal_naive", {"num_samples": 150, "aggregation": "median", "context_length": 256, "season": 24}),
    ]
    return task, [task.forecast(c, "val") for c in cands]


def test_greedy_never_worse_than_best_member_and_weights_sum_to_one(eth_members) -> None:
    task, members = eth_members
    y = task.truth("val").y
    ens = greedy(members, y)
    assert sum(ens.weights.values()) == pytest.approx(1.0)
    assert all(w > 0 for w in ens.weights.values())
    singles = {m.name: metrics.crps(m.samples, y).mean() for m in members}
    samples, w, _, _ = mixture(members, ens.weights)
    ens_crps = metrics.crps(samples, y, w).mean()
    assert ens_crps <= min(singles.values()) + 1e-9
    assert ens.history[0] == pytest.approx(min(singles.values()))


def test_ensemble_in_sweep_config(tmp_path, sweep) -> None:
    import json

    result = sweep(
        "run",
        "--symbols",
        "ETHUSD",
        "--lake",
        SHARED_LAKE,
        "--trials",
        4,
        "--out",
        tmp_path,
        "--run-id",
        "e",
        "--val-origins",
        150,
        "--test-origins",
        50,
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "hyperparams" / "e" / "ETHUSD.json").read_text())
    ens = cfg["ensemble"]
    assert sum(ens["weights"].values()) == pytest.approx(1.0)
    assert set(ens["weights"]) <= {"naive", "drift", "seasonal_naive"}
    best_val = min(b["validation"]["crps"] for b in cfg["backends"].values())
    assert ens["validation"]["crps"] <= best_val + 1e-9
    assert "ensemble_vs_chosen" in cfg["comparisons"]
