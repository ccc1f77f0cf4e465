"""MASE and MSIS use the series' in-sample seasonal-naive MAE: gluonts' definition, the same in every run."""

from __future__ import annotations

import numpy as np
import pandas as pd
from gluonts.evaluation import Evaluator
from gluonts.model.forecast import SampleForecast

from sweeper.objective import Candidate
from sweeper.sweep import RunRequest, prepare
from tests.helpers import SHARED_LAKE

# 121 draws: the 2.5%, 50% and 97.5% quantiles fall on draws, where gluonts' nearest-rank quantiles and
# numpy's linear ones (ours) agree, so any difference left is the scale's
DRIFT = {"num_samples": 121, "aggregation": "median", "context_length": 64}


def request(**kw) -> RunRequest:
    base = {"symbols": ["BTCUSDT"], "lake": str(SHARED_LAKE), "freq": "1h", "horizon": 3, "val_origins": 40,
            "test_origins": 10, "backends": ["drift"]}  # fmt: skip
    return RunRequest(**{**base, **kw})


def test_mase_and_msis_equal_gluonts_evaluator_on_the_same_forecasts() -> None:
    task = prepare(request()).tasks[0]
    cand = Candidate("drift", DRIFT)
    ours = task.scores(cand, "val")
    f = task.forecast(cand, "val")
    history = task.series.close[: task.plan.val[0]]
    tss, forecasts = [], []
    for i in range(f.samples.shape[0]):  # each forecast's past: the history before the first validation origin
        y = task.truth("val").y[i]
        idx = pd.period_range("2020-01-01", periods=history.size + y.size, freq="h")
        tss.append(pd.DataFrame(np.concatenate([history, y]), index=idx))
        forecasts.append(SampleForecast(f.samples[i], start_date=idx[history.size], item_id=str(i)))
    evaluator = Evaluator(quantiles=(0.025, 0.5, 0.975), seasonality=task.season, alpha=0.05, num_workers=None)
    _, items = evaluator(iter(tss), iter(forecasts), num_series=len(tss))
    assert task.season == 24
    np.testing.assert_allclose(ours["mase"], items["MASE"].to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(ours["msis"], items["MSIS"].to_numpy(), rtol=1e-9)


def test_scale_does_not_depend_on_which_backends_a_run_has() -> None:
    """A backend with a longer context (here: moirai's space) used to change every MASE in the run."""
    alone = prepare(request()).tasks[0]
    joined = prepare(request(backends=["drift", "moirai"])).tasks[0]
    assert joined.plan.protocol.max_context > alone.plan.protocol.max_context
    assert joined.scale() == alone.scale()
    for split in ("val", "test"):  # the same denominator at every origin of either run
        np.testing.assert_array_equal(joined.truth(split).scale, alone.truth(split).scale)
    s = joined.scores(Candidate("drift", DRIFT), "test")
    np.testing.assert_allclose(s["mase"], s["mae"] / alone.scale(), rtol=1e-12)


def test_season_one_is_an_option() -> None:
    task = prepare(request(season=1)).tasks[0]
    history = task.series.close[: task.plan.val[0]]
    assert task.scale() == np.abs(np.diff(history)).mean()
