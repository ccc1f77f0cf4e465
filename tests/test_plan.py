"""The evaluation plan, and the proof that no context contains its target."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper.backends import backend_class
from sweeper.errors import SweepError
from sweeper.plan import Protocol, contexts, make_plan, targets
from tests.helpers import assert_no_leak, shared_series


@pytest.mark.parametrize("horizon,stride", [(1, 1), (5, 1), (24, 3), (7, 7)])
def test_split_is_chronological_and_disjoint(horizon: int, stride: int) -> None:
    s = shared_series("BTCUSDT", "1h", last=4000)
    plan = make_plan(s, Protocol(horizon=horizon, max_context=256, stride=stride))
    assert plan.val.size >= 300  # hundreds of validation origins by default
    assert np.all(np.diff(plan.val) == stride) and np.all(np.diff(plan.test) == stride)
    # the last validation target ends before the first test target
    assert plan.val[-1] + horizon - 1 < plan.test[0]
    # the last test target is the last bar
    assert plan.test[-1] + horizon == len(s)
    assert plan.val[0] >= 256


def test_contexts_end_before_first_target() -> None:
    s = shared_series("ETHUSD", "1d")
    plan = make_plan(s, Protocol(horizon=3, max_context=64))
    ctx = contexts(s, plan.val, 64)
    y = targets(s, plan.val, 3)
    assert ctx.values.shape == (plan.val.size, 64, 5)
    # each context's last bar is the bar right before its origin, and precedes the first target in time
    np.testing.assert_array_equal(ctx.ts[:, -1], s.ts[plan.val - 1])
    assert np.all(ctx.ts[:, -1] < s.ts[plan.val])
    np.testing.assert_array_equal(y[:, 0], s.close[plan.val])


def test_explicit_origin_counts_and_too_short() -> None:
    s = shared_series("ETHUSD", "1d")
    plan = make_plan(s, Protocol(horizon=1, max_context=128, val_origins=400, test_origins=100))
    assert (plan.val.size, plan.test.size) == (400, 100)
    with pytest.raises(SweepError, match="series too short: ETHUSD 1d has 788 bars"):
        make_plan(s, Protocol(horizon=1, max_context=512, val_origins=400, test_origins=100))


BASELINE_KNOBS = {
    "naive": {"context_length": 64},
    "drift": {"context_length": 64},
    "seasonal_naive": {"context_length": 64, "season": 7},
}


@pytest.mark.parametrize("backend", list(BASELINE_KNOBS))
def test_baselines_never_see_their_targets(backend: str) -> None:
    s = shared_series("BTCUSD", "1d")
    plan = make_plan(s, Protocol(horizon=5, max_context=64))
    model = backend_class(backend)()
    origins = np.concatenate([plan.val[:3], plan.test[-3:]])
    assert_no_leak(model, s, BASELINE_KNOBS[backend], origins, horizon=5, num_samples=16)


def test_baselines_draws_are_prefix_stable_and_seeded() -> None:
    s = shared_series("BTCUSD", "1d")
    ctx = contexts(s, np.array([500, 900]), 64)
    model = backend_class("naive")()
    a = model.forecast(ctx, 3, 100, {"context_length": 64}, seed=1)
    b = model.forecast(ctx, 3, 100, {"context_length": 64}, seed=1)
    c = model.forecast(ctx, 3, 100, {"context_length": 64}, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # naive is centred on the last close: the median one-step draw sits near it
    assert np.median(a[:, :, 0], axis=1) == pytest.approx(ctx.close[:, -1], rel=0.02)


def test_future_timestamps_follow_the_contexts_calendar() -> None:
    spy = shared_series("SPY", "1d")
    fridays = np.flatnonzero((spy.ts.astype("datetime64[D]").view(np.int64) + 3) % 7 == 4)
    origins = fridays[(fridays > 100) & (fridays < len(spy) - 10)][:5] + 1  # the bar after a Friday
    fut = contexts(spy, origins, 60).future_ts(3)
    days = (fut.astype("datetime64[D]") - spy.ts[origins - 1].astype("datetime64[D]")[:, None]).astype(int)
    assert (days == [3, 4, 5]).all()  # Friday -> Monday, Tuesday, Wednesday: no weekend bars in an equity
    btc = shared_series("BTCUSDT", "1h", last=2000)
    ctx = contexts(btc, np.array([1500]), 200)
    np.testing.assert_array_equal(
        ctx.future_ts(30) - ctx.ts[:, -1:], np.arange(1, 31)[None, :] * np.timedelta64(3600, "s")
    )  # crypto trades every day: plain hourly steps
