"""The marketgpt backend: sample shapes, seeding, no look-ahead (walk-forward fine-tuning included), guards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sweeper.backends import backend_class
from sweeper.backends.marketgpt import MarketGPTBackend
from sweeper.cache import ForecastCache
from sweeper.data import Series, load
from sweeper.errors import SweepError
from sweeper.forecast import Forecaster, chunk_bounds
from sweeper.marketgpt import finetune as finetune_module
from sweeper.marketgpt.checkpoint import from_pretrained
from sweeper.marketgpt.finetune import context_windows
from sweeper.marketgpt.model import Batch
from sweeper.marketgpt.tokenizer import CandleTokenizer
from sweeper.marketgpt.train import TrainSummary
from sweeper.plan import Contexts, Protocol, contexts, make_plan
from sweeper.space import SPACES_DIR, load_space
from tests import marketgpt_support as support
from tests.helpers import assert_draws_per_origin, assert_live_forecast_is_recorded, assert_no_leak

pytestmark = pytest.mark.xdist_group("marketgpt")

SAMPLE = {"context_length": 64, "mode": "sample", "temperature": 1.0, "top_k": 0, "top_p": 0.9}
DIRECT = {"context_length": 64, "mode": "direct"}
TUNED = {**SAMPLE, "finetune_epochs": 1, "finetune_lr": 1e-3, "freeze_blocks": 1, "finetune_every": 168}


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
    [(SAMPLE, 1, 7), (SAMPLE, 5, 4), (DIRECT, 20, 3), (TUNED, 3, 5)],
    ids=["sample-h1", "sample-h5", "direct-beyond-head", "finetuned"],
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


@pytest.mark.parametrize("knobs,horizon", [(SAMPLE, 3), (DIRECT, 2), (TUNED, 2)], ids=["sample", "direct", "tuned"])
def test_no_leak(model, series, origins, knobs, horizon: int) -> None:
    assert_no_leak(model, series, knobs, origins, horizon)


def test_walk_forward_blocks_never_see_their_future(model, series) -> None:
    """One batch, three fine-tuning blocks: poisoning the bars from any origin on leaves that origin's
    forecast (and every earlier one) unchanged, while fine-tuning does change the forecasts."""
    idx = make_plan(series, Protocol()).val[300:306]
    knobs = {**DIRECT, "finetune_epochs": 2, "finetune_lr": 1e-3, "finetune_every": 2}
    base = model.forecast(contexts(series, idx, 64), 2, 1, knobs, seed=0)
    assert not np.allclose(base, model.forecast(contexts(series, idx, 64), 2, 1, DIRECT, seed=0))
    for i in (1, 2, 4):
        ohlcv = series.ohlcv.copy()
        ohlcv[idx[i] :, :4] *= 10.0
        poisoned = Series(series.symbol, series.freq, series.asset_class, series.ts, ohlcv, series.source)
        out = model.forecast(contexts(poisoned, idx, 64), 2, 1, knobs, seed=0)
        np.testing.assert_array_equal(out[: i + 1], base[: i + 1], err_msg=f"origin {i} saw its future")
        assert not np.array_equal(out[i + 1 :], base[i + 1 :])


def test_fine_tuning_data_cut(model, series, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block trains on bars before its first origin, and only on those it has not trained on yet."""
    seen: list[tuple[np.ndarray, np.datetime64 | None]] = []
    real = finetune_module.context_windows

    def spy(
        tokenizer: CandleTokenizer, values: np.ndarray, ts: np.ndarray, length: int, after: np.datetime64 | None = None
    ) -> Batch | None:
        seen.append((ts.copy(), after))
        return real(tokenizer, values, ts, length, after)

    monkeypatch.setattr(finetune_module, "context_windows", spy)
    idx = make_plan(series, Protocol()).val[100:130]
    model.forecast(contexts(series, idx, 64), 2, 2, {**TUNED, "finetune_every": 10}, seed=0)
    firsts = idx[::10]
    assert len(seen) == firsts.size
    for k, (o, (ts, after)) in enumerate(zip(firsts, seen, strict=True)):
        assert ts.max() < series.ts[o] and ts[-1] == series.ts[o - 1]  # strictly before the block
        assert after == (None if k == 0 else series.ts[firsts[k - 1] - 1])  # only newly past bars are targets


def test_context_windows_mask_learned_bars(model, series) -> None:
    tok = model.pretrained.tokenizer
    values, ts = series.ohlcv[:41], series.ts[:41]  # 40 returns
    batch = context_windows(tok, values, ts, 16, after=ts[30])
    assert batch is not None and batch.tokens.shape[1] == 16
    targets = batch.mask[:, 1:].sum().item()
    assert targets >= 10  # bars 31..40 are new (some are targets in two overlapping windows)
    assert not batch.mask[:, : 16 - 10].any()  # every window ends at or before bar 40: early slots are old bars
    assert context_windows(tok, values, ts, 16, after=ts[-1]) is None
    full = context_windows(tok, values, ts, 16)
    assert full is not None and full.mask.all()


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
    for bad in ({"mode": "beam"}, {"temperature": 0.0}, {"top_p": 0.0}, {"finetune_epochs": -1}):
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


def test_live_forecast_equals_the_sweeps_recorded_forecast(sweep, mg_lake, mg_trained, tmp_path: Path) -> None:
    """After a real `sweep run` (sampled paths, no walk-forward fine-tuning: those weights depend on the
    block of origins), a live forecast from the bars before a recorded origin is the sweep's forecast there."""
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    space = yaml.safe_load((SPACES_DIR / "marketgpt.yaml").read_text())
    space["params"] |= {
        "num_samples": {"type": "categorical", "choices": [16, 32], "default": 16},
        "context_length": {"type": "categorical", "choices": [32, 64], "default": 64},
        "mode": {"type": "categorical", "choices": ["sample"], "default": "sample"},
        "finetune_epochs": {"type": "categorical", "choices": [0], "default": 0},
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
