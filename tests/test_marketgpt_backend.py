"""The marketgpt backend: sample shapes, seeding, no look-ahead, guards (fine-tuning: tests/test_finetune.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sweeper.backends import backend_class
from sweeper.backends.marketgpt import MarketGPTBackend
from sweeper.cache import ForecastCache
from sweeper.data import Series, available, load
from sweeper.errors import SweepError
from sweeper.forecast import Forecaster, chunk_bounds
from sweeper.marketgpt.checkpoint import from_pretrained
from sweeper.marketgpt.corpus import training_cut
from sweeper.marketgpt.train import TrainSummary
from sweeper.passes import ContextPasses
from sweeper.plan import Contexts, Protocol, contexts, make_plan
from sweeper.space import SPACES_DIR, load_space
from tests import marketgpt_support as support
from tests.helpers import SHARED_LAKE, assert_draws_per_origin, assert_live_forecast_is_recorded, assert_no_leak

pytestmark = pytest.mark.xdist_group("marketgpt")

SAMPLE = {"context_length": 64, "mode": "sample", "temperature": 1.0, "top_k": 0, "top_p": 0.9}
DIRECT = {"context_length": 64, "mode": "direct"}


@pytest.fixture(scope="module")
def mg_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return support.lake(tmp_path_factory)


@pytest.fixture(scope="module")
def mg_trained(tmp_path_factory: pytest.TempPathFactory) -> TrainSummary:
    return support.trained(tmp_path_factory)


@pytest.fixture(scope="module")
def model(mg_trained: TrainSummary) -> MarketGPTBackend:
    return backend_class("marketgpt")(checkpoint=str(mg_trained.out_dir))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def series(mg_lake: Path) -> Series:
    return load(mg_lake, ["BTCUSDT"], "1h")[0]


@pytest.fixture(scope="module")
def origins(series: Series) -> np.ndarray:
    """Validation and test origins of the sweep plan the checkpoint was trained for."""
    plan = make_plan(series, Protocol())
    return np.concatenate([plan.val[[0, 250]], plan.test[[0]]])


@pytest.mark.parametrize(
    "knobs,horizon,n",
    [(SAMPLE, 1, 7), (SAMPLE, 5, 4), (DIRECT, 20, 3)],
    ids=["sample-h1", "sample-h5", "direct-beyond-head"],
)
def test_shapes_and_seeding(model, series, origins, knobs, horizon: int, n: int) -> None:
    ctx = contexts(series, origins, 64)
    out = model.forecast(ctx, horizon, n, knobs, seed=3)
    assert out.shape == (origins.size, n, horizon)
    assert np.all(np.isfinite(out)) and np.all(out > 0)
    np.testing.assert_array_equal(model.forecast(ctx, horizon, n, knobs, seed=3), out)
    if knobs["mode"] == "direct":  # a point forecast: every sample is the head's path
        assert np.all(out == out[:, :1])
    else:
        assert not np.array_equal(model.forecast(ctx, horizon, n, knobs, seed=4), out)
        assert np.unique(out[:, :, -1]).size > origins.size  # draws differ within an origin


@pytest.mark.parametrize("horizon", [1, 5])
def test_an_origins_draws_are_the_same_alone_as_in_any_batch(model, series, origins, horizon: int) -> None:
    plan = make_plan(series, Protocol())
    few = plan.val[[0, 40, 80, 120]]
    assert_draws_per_origin(model, series, SAMPLE, few, horizon, 2 * model.draw_block, int(plan.val[200]), rtol=1e-6)


def test_top_k_one_is_greedy(model, series, origins) -> None:
    out = model.forecast(contexts(series, origins, 64), 3, 6, {**SAMPLE, "top_k": 1}, seed=0)
    assert np.all(out == out[:, :1])


@pytest.mark.parametrize("knobs,horizon", [(SAMPLE, 3), (DIRECT, 2)], ids=["sample", "direct"])
def test_no_leak(model, series, origins, knobs, horizon: int) -> None:
    assert_no_leak(model, series, knobs, origins, horizon)


def test_guards(model, mg_trained, series, origins) -> None:
    with pytest.raises(SweepError, match="sweep train marketgpt"):
        MarketGPTBackend(None)
    with pytest.raises(SweepError, match=r"missing model\.safetensors"):
        MarketGPTBackend(str(mg_trained.out_dir.parent / "nowhere"))
    ctx = contexts(series, origins, 64)
    with pytest.raises(SweepError, match="trained on 1h bars"):
        model.forecast(Contexts(ctx.values, ctx.ts, "1d"), 1, 2, SAMPLE, 0)
    early = contexts(series, np.array([1000]), 64)  # inside the training data
    with pytest.raises(SweepError, match="may have been training data"):
        model.forecast(early, 1, 2, SAMPLE, 0)
    for bad in ({"mode": "beam"}, {"temperature": 0.0}, {"top_p": 0.0}):
        with pytest.raises(SweepError, match="marketgpt"):
            model.forecast(ctx, 1, 2, {**SAMPLE, **bad}, 0)


def test_through_the_forecaster_with_the_default_space(mg_trained, series) -> None:
    params = {**load_space("marketgpt").defaults(), "context_length": 64}
    fc = Forecaster(ForecastCache(None), checkpoints={"marketgpt": str(mg_trained.out_dir)})
    plan = make_plan(series, Protocol())
    got = fc.samples(series, plan, "test", "marketgpt", params, 16)
    assert got.samples.shape == (plan.test.size, 16, 1) and fc.model_calls == len(chunk_bounds(plan.test.size))


def test_init_checkpoint_fits_bins_on_the_lake(mg_lake, series, origins, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SWEEP_LAKE", str(mg_lake))
    path = MarketGPTBackend.init_checkpoint("tiny", tmp_path / "init")
    pre = from_pretrained(path)
    assert pre.meta.step == 0 and pre.meta.trained_until is None  # random weights: no leak guard needed
    assert pre.meta.symbols == ("BTCUSDT", "ETHUSDT") and pre.tokenizer.vocab_size == 1024
    out = MarketGPTBackend(str(path)).forecast(contexts(series, origins, 64), 2, 3, SAMPLE, 0)
    assert out.shape == (origins.size, 3, 2)


def test_init_checkpoint_on_a_lake_with_a_late_series_fits_bins_on_the_others(tmp_path, monkeypatch) -> None:
    """The common training cut of the shared lake's 1h series is the earliest first validation origin among
    them (a series that ends early sets it); ADAUSDT starts after it, has no bars before it and made the
    init fail. Now the series with a context's bars before the cut give the bins, and only they."""
    monkeypatch.setenv("SWEEP_LAKE", str(SHARED_LAKE))
    path = MarketGPTBackend.init_checkpoint("tiny", tmp_path / "init")
    pre = from_pretrained(path)
    every = load(SHARED_LAKE, sorted({r.symbol for r in available(SHARED_LAKE) if r.freq == "1h"}), "1h")
    cut = training_cut(every, Protocol())
    enough = {s.symbol for s in every if np.searchsorted(s.ts, cut) - 1 >= pre.model.cfg.context_length + 1}
    assert set(pre.meta.symbols) == enough and "BTCUSDT" in enough and "ADAUSDT" not in enough


def test_live_forecast_equals_the_sweeps_recorded_forecast(sweep, mg_lake, mg_trained, tmp_path: Path) -> None:
    """After a real `sweep run` (sampled paths), a live forecast from the bars before a recorded origin is
    the sweep's forecast there."""
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    space = yaml.safe_load((SPACES_DIR / "marketgpt.yaml").read_text())
    space["params"] |= {
        "num_samples": {"type": "categorical", "choices": [16, 32], "default": 16},
        "context_length": {"type": "categorical", "choices": [32, 64], "default": 64},
        "mode": {"type": "categorical", "choices": ["sample"], "default": "sample"},
    }
    (spaces / "marketgpt.yaml").write_text(yaml.safe_dump(space))
    (spaces / "naive.yaml").write_text((SPACES_DIR / "naive.yaml").read_text())
    result = sweep(
        "run", "--symbols", "BTCUSDT", "--lake", mg_lake, "--freq", "1h", "--backends", "marketgpt", "naive",
        "--checkpoint", f"marketgpt={mg_trained.out_dir}", "--trials", 3, "--val-origins", 40,
        "--test-origins", 20, "--spaces", spaces, "--out", tmp_path, "--run-id", "e2e",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_live_forecast_is_recorded(tmp_path / "hyperparams" / "e2e" / "BTCUSDT.json", "marketgpt")


def test_the_context_pass_runs_once_per_origin_whatever_the_sampling_knobs(mg_trained, series, origins) -> None:
    """Other temperature, top_k or top_p and the next draws of an entry reuse an origin's context pass; the
    draws are those of a backend that runs every pass afresh."""
    warm, cold = (MarketGPTBackend(str(mg_trained.out_dir)) for _ in range(2))
    cold.passes = ContextPasses(0)
    ctx, seeds = contexts(series, origins, 64), np.array([3, 5, 8])
    block = MarketGPTBackend.draw_block
    for knobs, first in ((SAMPLE, 0), ({**SAMPLE, "temperature": 0.6, "top_k": 20}, 0), (SAMPLE, block)):
        got = warm.forecast(ctx, 2, block, knobs, seeds, first=first)
        np.testing.assert_array_equal(got, cold.forecast(ctx, 2, block, knobs, seeds, first=first))
    assert warm.passes.passes == origins.size and cold.passes.passes == 3 * origins.size
    warm.forecast(contexts(series, origins, 48), 2, block, SAMPLE, seeds)  # another context: other inputs
    assert warm.passes.passes == 2 * origins.size


def test_the_first_bars_filter_runs_once_per_call_however_many_blocks(model, series, origins, monkeypatch) -> None:
    """Every block's first bar samples the context pass's logits: their filter (a sort over the vocabulary
    for top_p) runs once, not once per block, and the draws are those each block alone would make."""
    from sweeper.marketgpt import sampling

    calls: list[int] = []
    real = sampling.filter_logits
    monkeypatch.setattr(sampling, "filter_logits", lambda logits, *a: calls.append(logits.shape[0]) or real(logits, *a))
    ctx, seeds, block = contexts(series, origins, 64), np.array([3, 5, 8]), MarketGPTBackend.draw_block
    many = model.forecast(ctx, 1, 4 * block, SAMPLE, seeds)
    assert calls == [origins.size]  # one filter for 4 blocks
    for j in range(4):
        np.testing.assert_array_equal(
            many[:, j * block : (j + 1) * block], model.forecast(ctx, 1, block, SAMPLE, seeds, first=j * block)
        )
    calls.clear()
    model.forecast(ctx, 3, 2 * block, SAMPLE, seeds)
    assert calls == [origins.size] + [origins.size * block] * 2 * 2  # then each later bar's, per block
