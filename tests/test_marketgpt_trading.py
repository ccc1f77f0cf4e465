"""The trading read-out (sweeper/trading.py) against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper.errors import SweepError
from sweeper.trading import sign_strategy

LAST = np.full(6, 100.0)
POINT = np.array([101.0, 99.0, 101.0, 101.0, 99.0, 100.0])  # predicted returns +1% -1% +1% +1% -1% 0
ACTUAL = np.array([102.0, 98.0, 99.0, 103.0, 97.0, 101.0])  # actual returns  +2% -2% -1% +3% -3% +1%


def test_one_bar_lag_by_hand() -> None:
    r = sign_strategy(POINT, LAST, ACTUAL, cost_bps=10.0, lag=1)
    # positions 1 -1 1 1 -1 held over bars 1..5 (returns -2% -1% +3% -3% +1%), turnover 1 2 2 0 2 at 0.1%:
    pnl = np.array([-0.02 - 0.001, 0.01 - 0.002, 0.03 - 0.002, -0.03, -0.01 - 0.002])
    assert r.directional_accuracy == pytest.approx(4.5 / 6)  # right but bar 2; the flat forecast is a tie: 0.5
    assert r.bars == 5 and r.trades == 4
    assert r.win_rate == pytest.approx(2 / 5)
    assert r.profit_factor == pytest.approx((0.008 + 0.028) / (0.021 + 0.03 + 0.012))
    # equity 0.979, 0.986832, 1.014463296 (peak), x0.97, x0.988: the deepest fall is 1 - 0.97 * 0.988
    assert r.max_drawdown == pytest.approx(1 - 0.97 * 0.988)
    assert r.total_return == pytest.approx(0.979 * 1.008 * 1.028 * 0.97 * 0.988 - 1)
    assert r.sharpe == pytest.approx(-0.0054 / np.sqrt(0.0021872 / 4))  # mean -0.0054, sum of squares 0.0021872
    assert r.sharpe == pytest.approx(pnl.mean() / pnl.std(ddof=1))
    yearly = sign_strategy(POINT, LAST, ACTUAL, cost_bps=10.0, lag=1, periods_per_year=8760)
    assert yearly.sharpe == pytest.approx(r.sharpe * np.sqrt(8760))


def test_no_lag_trades_the_forecast_bar() -> None:
    r = sign_strategy(POINT, LAST, ACTUAL, cost_bps=10.0, lag=0)
    # pnl 0.019 0.018 -0.012 0.03 0.028 -0.001 (going flat at the end costs 0.1%)
    assert r.bars == 6 and r.trades == 5  # turnover 1 2 2 0 2 1
    assert r.win_rate == pytest.approx(4 / 5)  # the flat bar is not a trade
    assert r.profit_factor == pytest.approx(0.095 / 0.013)
    assert r.total_return == pytest.approx(1.019 * 1.018 * 0.988 * 1.03 * 1.028 * 0.999 - 1)
    assert r.max_drawdown == pytest.approx(0.012)


def test_horizon_paths_use_the_first_step_and_costs_default() -> None:
    point2 = np.stack([POINT, POINT * 2], axis=1)
    actual2 = np.stack([ACTUAL, ACTUAL * 3], axis=1)
    assert sign_strategy(point2, LAST, actual2) == sign_strategy(POINT, LAST, ACTUAL, cost_bps=10.0, lag=1)
    free = sign_strategy(POINT, LAST, ACTUAL, cost_bps=0.0)
    assert free.profit_factor == pytest.approx((0.01 + 0.03) / (0.02 + 0.03 + 0.01))


def test_bad_input() -> None:
    with pytest.raises(SweepError, match="more origins"):
        sign_strategy(POINT[:1], LAST[:1], ACTUAL[:1], lag=1)
    with pytest.raises(SweepError, match="shapes differ"):
        sign_strategy(POINT, LAST[:5], ACTUAL)
