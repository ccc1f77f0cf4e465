"""Moirai 2 backend: quantiles turned into samples, a tiny random checkpoint loaded like a hub download."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweeper import load_config
from sweeper.backends import backend_class
from sweeper.backends.moirai2 import PRESETS, Moirai2Backend, sample_quantile_function
from sweeper.errors import SweepError
from sweeper.plan import contexts
from sweeper.space import load_space
from tests.helpers import SHARED_LAKE, assert_no_leak, bars_frame, shared_series
from tests.pretrained_support import assert_imports_stay_light

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("moirai2")]

H, N = 3, 16
KNOBS = {"context_length": 128}
LEVELS = np.arange(1, 10) / 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Moirai2Backend.init_checkpoint("tiny", tmp_path_factory.mktemp("moirai2") / "tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Moirai2Backend:
    return Moirai2Backend(str(tiny_dir), "cpu")


@pytest.fixture(scope="module")
def series():
    return shared_series("SOLUSDT", "1h", last=1000)


def _ctx(series, n: int, length: int = KNOBS["context_length"]):
    return contexts(series, np.arange(len(series) - 100 - n, len(series) - 100), length)


# --- quantiles to samples (no model) -------------------------------------------------------------------


def test_samples_reproduce_the_quantiles_in_between() -> None:
    q = np.array([[[90.0, 9.0], [94, 9.4], [97, 9.7], [99, 9.9], [100, 10], [101, 10.1], [103, 10.3], [106, 10.6],
                   [110, 11]]])  # fmt: skip
    draws = sample_quantile_function(q, LEVELS, 200_000, 0)
    assert draws.shape == (1, 200_000, 2)
    np.testing.assert_allclose(np.quantile(draws[0], LEVELS, axis=0), q[0], rtol=2e-3)
    # halfway between two levels the quantile function is halfway between their quantiles
    np.testing.assert_allclose(np.quantile(draws[0, :, 0], 0.15), 92.0, atol=0.2)


def test_tails_are_exponential_through_the_neighbouring_quantile() -> None:
    q = np.array([[[90.0], [94], [97], [99], [100], [101], [103], [106], [110]]])
    draws = sample_quantile_function(q, LEVELS, 400_000, 1)[0, :, 0]
    left = 90 + (94 - 90) / np.log(2) * np.log(0.01 / 0.1)  # Q(0.01)
    right = 110 - (110 - 106) / np.log(2) * np.log(0.01 / 0.1)  # Q(0.99)
    np.testing.assert_allclose(np.quantile(draws, [0.01, 0.99]), [left, right], rtol=2e-3)
    assert draws.min() < left and draws.max() > right  # unbounded, not cut at the outer quantiles


def test_crossing_quantiles_are_sorted_and_paths_keep_their_rank() -> None:
    q = np.array([[[100.0, 200.0]] * 9]) + np.array([0, 2, 1, 3, 4, 6, 5, 7, 8])[None, :, None]  # crossing
    draws = sample_quantile_function(q, LEVELS, 1000, 2)
    ranks = np.argsort(np.argsort(draws[0], axis=0), axis=0)
    np.testing.assert_array_equal(ranks[:, 0], ranks[:, 1])  # one quantile rank per path
    inner = draws[0][(draws[0, :, 0] > 100) & (draws[0, :, 0] < 108)]
    assert np.all(np.diff(np.sort(inner[:, 0])) >= 0) and inner.size


def test_draws_are_seeded_and_prefix_consistent() -> None:
    q = np.sort(np.random.default_rng(3).normal(100, 5, size=(4, 9, 5)), axis=1)
    many = sample_quantile_function(q, LEVELS, 64, 9)
    np.testing.assert_array_equal(many, sample_quantile_function(q, LEVELS, 64, 9))
    np.testing.assert_array_equal(sample_quantile_function(q, LEVELS, 10, 9), many[:, :10])


# --- the backend -----------------------------------------------------------------------------------------------


def test_registered_lazily_with_a_valid_space() -> None:
    assert backend_class("moirai2") is Moirai2Backend
    assert_imports_stay_light("sweeper.backends.moirai2")
    assert load_space("moirai2").defaults() is not None


def test_init_checkpoint_is_save_pretrained_and_never_overwrites(tiny_dir: Path) -> None:
    assert {"config.json", "model.safetensors"} <= {p.name for p in tiny_dir.iterdir()}
    config = json.loads((tiny_dir / "config.json").read_text())
    assert {k: config[k] for k in ("d_model", "d_ff", "num_layers", "patch_size")} == {
        "d_model": 64, "d_ff": 128, "num_layers": 2, "patch_size": 16,
    }  # fmt: skip
    assert config["quantile_levels"] == list(PRESETS["tiny"]["quantile_levels"])
    with pytest.raises(SweepError, match="not an empty directory"):
        Moirai2Backend.init_checkpoint("tiny", tiny_dir)


def test_small_preset_has_the_published_shapes(tmp_path: Path) -> None:
    """moirai-2.0-R-small: 11.4M parameters as published; written, then loaded back strictly."""
    loaded = Moirai2Backend(str(Moirai2Backend.init_checkpoint("small", tmp_path / "small")), "cpu")
    assert sum(p.numel() for p in loaded._module.parameters()) == 11_387_208


def test_forecast_samples_the_models_quantiles(tiny: Moirai2Backend, series) -> None:
    ctx = _ctx(series, 4)
    q = tiny.quantiles(ctx, H)
    assert q.shape == (4, 9, H)
    paths = tiny.forecast(ctx, H, 2000, KNOBS, seed=7)
    assert paths.shape == (4, 2000, H) and np.isfinite(paths).all()
    np.testing.assert_array_equal(paths, tiny.forecast(ctx, H, 2000, KNOBS, seed=7))
    np.testing.assert_array_equal(tiny.forecast(ctx, H, N, KNOBS, seed=7), paths[:, :N])
    assert not np.array_equal(paths, tiny.forecast(ctx, H, 2000, KNOBS, seed=8))
    below = (paths[:, :, None, :] <= np.sort(q, axis=1)[:, None]).mean(axis=1)  # (B, 9, H): CDF at each quantile
    np.testing.assert_allclose(below, np.broadcast_to(LEVELS[None, :, None], below.shape), atol=0.04)


def test_long_horizons_use_recursive_decoding(tiny: Moirai2Backend, series) -> None:
    """Past num_predict_token x patch_size (64 bars) the library decodes recursively: still one call."""
    paths = tiny.forecast(_ctx(series, 2), 80, N, KNOBS, seed=0)
    assert paths.shape == (2, N, 80) and np.isfinite(paths).all()


@pytest.mark.parametrize("horizon", [H, 80])
def test_no_leak(tiny: Moirai2Backend, series, horizon: int) -> None:
    origins = np.array([len(series) - 300, len(series) - 100])
    assert_no_leak(tiny, series, KNOBS, origins, horizon=horizon, num_samples=8)


def test_sweep_run_end_to_end(sweep, tiny_dir: Path, tmp_path: Path) -> None:
    result = sweep(
        "run", "--symbols", "BTCUSDT", "ETHUSDT", "--lake", SHARED_LAKE, "--freq", "1h",
        "--backends", "moirai2", "naive", "--checkpoint", f"moirai2={tiny_dir}", "--trials", 3,
        "--val-origins", 40, "--test-origins", 20, "--out", tmp_path, "--run-id", "e2e",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    knobs = set(load_space("moirai2").params)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        config = json.loads((tmp_path / "hyperparams" / "e2e" / f"{symbol}.json").read_text())
        moirai2 = config["backends"]["moirai2"]
        assert (
            "error" not in moirai2
            and moirai2["trials"] + moirai2["pruned_trials"] == 3
            and moirai2["checkpoint"] == str(tiny_dir)
        )
        assert set(moirai2["params"]) == knobs
        assert np.isfinite(moirai2["validation"]["crps"]) and np.isfinite(moirai2["test"]["crps"])
    # a live forecast from the bars before a recorded origin is the sweep's forecast there, exactly
    origins = pl.read_parquet(tmp_path / "results" / "e2e" / "origins.parquet")
    row = origins.filter(symbol="BTCUSDT", candidate="moirai2", split="test").sort("origin_row").row(-1, named=True)
    bars = bars_frame(shared_series("BTCUSDT", "1h")).head(row["origin_row"])
    f = load_config(tmp_path / "hyperparams" / "e2e" / "BTCUSDT.json", backend="moirai2").forecast(bars)
    np.testing.assert_array_equal(f.point, row["point"])
    np.testing.assert_array_equal(f.quantiles[0.05], row["q05"])
