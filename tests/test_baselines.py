"""The naive baseline is the last close: its draws are centred there, so its point forecast never moves."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper import metrics
from sweeper.aggregate import aggregate
from sweeper.backends.baselines import Naive
from sweeper.plan import contexts, targets
from sweeper.trading import sign_strategy
from tests.helpers import shared_series


@pytest.fixture(scope="module")
def hourly():
    s = shared_series("BTCUSDT", "1h", last=2000)
    origins = np.arange(600, 1800)
    return s, origins, contexts(s, origins, 128)


@pytest.mark.parametrize("n", [16, 64, 256, 1024])
def test_naive_median_path_is_exactly_the_last_close(hourly, n: int) -> None:
    _, _, ctx = hourly
    draws = Naive().forecast(ctx, 6, 1024, {}, seed=3)[:, :n]  # a trial's first n of the cached draws
    last = ctx.close[:, -1, None]
    for how in ("median", "mean", "trimmed_mean_10", "winsorized_mean_5"):
        point = aggregate(draws, how)
        np.testing.assert_allclose(point, np.broadcast_to(last, point.shape), rtol=1e-13, atol=0)
    assert np.all(draws > 0)
    ups, downs = (draws > last[:, :, None]).sum(axis=1), (draws < last[:, :, None]).sum(axis=1)
    np.testing.assert_array_equal(ups, downs)  # centred: as many draws above as below, at every step


def test_naive_never_trades_and_has_no_direction(hourly) -> None:
    s, origins, ctx = hourly
    point = aggregate(Naive().forecast(ctx, 1, 256, {}, seed=0), "median")
    t = metrics.truth(targets(s, origins, 1), ctx.close[:, -1], 1.0)
    assert np.all(metrics.point_scores(point, t)["directional_accuracy"] == 0.5)
    r = sign_strategy(point, t.last_close, t.y)
    assert r.trades == 0 and r.total_return == 0.0 and r.directional_accuracy == 0.5


def test_naive_draws_keep_the_spread_of_the_context_returns(hourly) -> None:
    """Centring moves no mass to the middle: the draws' one-step log spread is the context returns' spread."""
    _, _, ctx = hourly
    draws = Naive().forecast(ctx, 1, 1024, {}, seed=1)[:, :, 0]
    spread = np.log(draws[:, ::2] / ctx.close[:, -1, None]).std(axis=1)  # the unmirrored half
    expected = np.diff(np.log(ctx.close), axis=1).std(axis=1)
    np.testing.assert_allclose(np.median(spread / expected), 1.0, atol=0.03)


def test_tuned_naive_in_a_sweep_task_predicts_no_move() -> None:
    """Through the forecast cache (draws stored as float32) and every aggregation naive's space allows."""
    from sweeper.objective import Candidate
    from sweeper.sweep import RunRequest, prepare
    from tests.helpers import SHARED_LAKE

    task = prepare(RunRequest(symbols=["BTCUSD"], lake=str(SHARED_LAKE), freq="1d", backends=["naive"])).tasks[0]
    for how in task.spaces["naive"].params["aggregation"].choices:
        cand = Candidate("naive", {"num_samples": 512, "aggregation": how, "context_length": 32})
        scores = task.scores(cand, "test")
        assert np.all(scores["directional_accuracy"] == 0.5), how
