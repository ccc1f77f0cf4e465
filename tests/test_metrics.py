"""Metrics against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper import metric, metrics


def test_crps_of_two_member_ensemble_by_hand() -> None:
    # CRPS = mean|X - y| - 0.5 mean|X - X'|; X in {1, 3}, y = 2: 1 - 0.5 * (0 + 2 + 2 + 0) / 4 = 0.5
    samples = np.array([[[1.0], [3.0]]])
    assert metrics.crps(samples, np.array([[2.0]]))[0] == pytest.approx(0.5)
    # y = 5: mean|X-y| = 3, spread term 0.5: 2.5
    assert metrics.crps(samples, np.array([[5.0]]))[0] == pytest.approx(2.5)


def test_crps_of_point_mass_is_absolute_error_and_weights_mix() -> None:
    samples = np.full((1, 4, 2), 10.0)
    assert metrics.crps(samples, np.array([[12.0, 7.0]]))[0] == pytest.approx((2 + 3) / 2)
    # weights (1, 0) leave only the first member: crps = |1 - 2| = 1
    two = np.array([[[1.0], [3.0]]])
    assert metrics.crps(two, np.array([[2.0]]), weights=np.array([1.0, 0.0]))[0] == pytest.approx(1.0)


def test_point_metrics_by_hand() -> None:
    history = np.array([100.0, 102.0, 101.0, 104.0])  # one-step |changes| 2, 1, 3 -> season-1 scale 2
    t = metrics.truth(np.array([[106.0, 103.0]]), history[-1:], metrics.seasonal_scale(history, 1))
    assert t.scale[0] == pytest.approx(2.0) and t.last_close[0] == 104.0
    point = np.array([[105.0, 105.0]])
    s = metrics.point_scores(point, t)
    assert s["mae"][0] == pytest.approx((1 + 2) / 2)
    assert s["mse"][0] == pytest.approx((1 + 4) / 2)
    assert s["mase"][0] == pytest.approx(1.5 / 2)
    assert s["pct_return_mae"][0] == pytest.approx((abs(2 / 104 - 1 / 104) + abs(-1 / 104 - 1 / 104)) / 2)
    assert s["directional_accuracy"][0] == pytest.approx(0.5)  # up/up right, down/up wrong


def test_msis_by_hand() -> None:
    # 201 samples 0..200: 2.5% and 97.5% quantiles are 5 and 195
    samples = np.arange(201, dtype=float).reshape(1, 201, 1)
    scale = np.array([10.0])
    inside = metrics.msis(samples, np.array([[100.0]]), scale)
    assert inside[0] == pytest.approx(190 / 10)
    above = metrics.msis(samples, np.array([[205.0]]), scale)
    assert above[0] == pytest.approx((190 + (2 / 0.05) * 10) / 10)


def test_score_returns_one_value_per_origin() -> None:
    rng = np.random.default_rng(0)
    samples = 100 + rng.normal(size=(6, 50, 3))
    t = metrics.truth(100 + rng.normal(size=(6, 3)), 100 + rng.normal(size=6), 1.5)
    out = metrics.score(samples, samples.mean(axis=1), t, np.full(6, 0.01))
    assert set(out) == set(metric.NAMES)
    assert all(v.shape == (6,) for v in out.values())


def test_presorted_path_gives_the_same_scores() -> None:
    rng = np.random.default_rng(5)
    samples = 50 + rng.standard_t(4, size=(30, 77, 4))
    t = metrics.truth(50 + rng.normal(size=(30, 4)), 50 + rng.normal(size=30), 0.7)
    point = samples.mean(axis=1)
    plain = metrics.score(samples, point, t, 0.0)
    fast = metrics.score(np.sort(samples, axis=1), point, t, 0.0, presorted=True)
    for k in plain:
        np.testing.assert_allclose(fast[k], plain[k], rtol=1e-12)


def test_a_no_change_forecast_has_no_direction() -> None:
    last = np.array([100.0, 100.0, 100.0])
    t = metrics.truth(np.array([[101.0], [99.0], [100.0]]), last, 1.0)
    flat = metrics.point_scores(last[:, None] * (1 + 1e-14), t)  # float rounding of "no change"
    np.testing.assert_array_equal(flat["directional_accuracy"], [0.5, 0.5, 0.5])
    up = metrics.point_scores(np.full((3, 1), 100.5), t)
    np.testing.assert_array_equal(up["directional_accuracy"], [1.0, 0.0, 0.5])  # a flat actual is a tie too


def test_weighted_quantile_with_equal_weights_is_numpys_linear_quantile() -> None:
    draws = np.random.default_rng(3).normal(size=(7, 40, 3))
    for q in (0.025, 0.3, 0.5, 0.975):
        got = metrics.weighted_quantile(draws, np.full(40, 0.7), q)
        np.testing.assert_allclose(got, np.quantile(draws, q, axis=1), rtol=1e-12)


def test_ensemble_msis_reads_intervals_as_its_members_do() -> None:
    """An ensemble made of one member is that member: the same MSIS (the step inverse CDF the ensemble used
    before read a different interval off the same draws)."""
    from sweeper.ensemble import mixture
    from sweeper.objective import Forecast

    rng = np.random.default_rng(4)
    draws = np.sort(100 + rng.normal(size=(20, 50, 2)), axis=1)
    y, scale = 100 + rng.normal(size=(20, 2)), np.full(20, 0.8)
    member = metrics.msis(draws, y, scale, presorted=True)
    pooled, w, _, _ = mixture([Forecast("a", draws, draws.mean(axis=1), 0.0)], {"a": 1.0})
    np.testing.assert_allclose(metrics.msis(pooled, y, scale, weights=w), member, rtol=1e-12)


def test_default_season_per_bar_size_and_asset_class() -> None:
    assert metrics.default_season("1h", "crypto") == 24 and metrics.default_season("1min", "crypto") == 1440
    assert metrics.default_season("1d", "crypto") == 7 and metrics.default_season("1d", "equity") == 5
    assert metrics.default_season("1h", "equity") == 1 and metrics.default_season("1h", "fx") == 24
    assert metrics.seasonal_scale(np.array([1.0, 2.0, 4.0, 7.0]), 2) == pytest.approx((3 + 5) / 2)
    assert metrics.seasonal_scale(np.array([1.0, 2.0, 4.0]), 5) == pytest.approx(1.5)  # longer season: 1
