"""Moirai 1.x backend: a tiny random checkpoint in the real format, loaded like a hub download, on real candles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sweeper.backends import backend_class
from sweeper.backends.moirai import MoiraiBackend
from sweeper.errors import SweepError
from sweeper.passes import ContextPasses
from sweeper.plan import contexts
from sweeper.space import load_space
from tests.helpers import (
    SHARED_LAKE,
    assert_draws_per_origin,
    assert_live_forecast_is_recorded,
    assert_no_leak,
    shared_series,
)
from tests.pretrained_support import assert_imports_stay_light

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("moirai")]

H, N = 3, 16
KNOBS = {"context_length": 128, "patch_size": 16, "use_covariates": False}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return MoiraiBackend.init_checkpoint("tiny", tmp_path_factory.mktemp("moirai") / "tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> MoiraiBackend:
    return MoiraiBackend(str(tiny_dir), "cpu")


@pytest.fixture(scope="module")
def series():
    return shared_series("ETHUSDT", "1h", last=1000)


def _ctx(series, n: int, length: int = KNOBS["context_length"]):
    return contexts(series, np.arange(len(series) - 40 - n, len(series) - 40), length)


def test_registered_lazily_with_a_valid_space() -> None:
    assert backend_class("moirai") is MoiraiBackend
    assert_imports_stay_light("sweeper.backends.moirai")
    space = load_space("moirai")
    assert space.defaults() is not None
    assert set(space.params["patch_size"].choices) == {8, 16, 32, 64, 128, "auto"}


def test_init_checkpoint_is_save_pretrained_and_never_overwrites(tiny_dir: Path, tmp_path: Path) -> None:
    assert {"config.json", "model.safetensors"} <= {p.name for p in tiny_dir.iterdir()}
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["d_model"] == 64 and config["patch_sizes"] == [8, 16, 32, 64, 128]
    assert config["distr_output"]["_target_"] == "uni2ts.distribution.mixture.MixtureOutput"
    with pytest.raises(SweepError, match="not an empty directory"):
        MoiraiBackend.init_checkpoint("tiny", tiny_dir)


def test_small_preset_has_the_published_shapes(tmp_path: Path) -> None:
    """moirai-1.1-R-small: d_model 384, 6 layers, 13.8M parameters; written, then loaded back strictly."""
    loaded = MoiraiBackend(str(MoiraiBackend.init_checkpoint("small", tmp_path / "small")), "cpu")
    assert sum(p.numel() for p in loaded._module.parameters()) == 13_827_528


def test_shapes_reproducible_and_prefix_consistent(tiny: MoiraiBackend, series) -> None:
    import torch

    ctx = _ctx(series, 4)
    state = torch.get_rng_state()
    paths = tiny.forecast(ctx, H, 40, KNOBS, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    assert paths.shape == (4, 40, H) and paths.dtype == np.float32 and np.isfinite(paths).all()
    np.testing.assert_array_equal(paths, tiny.forecast(ctx, H, 40, KNOBS, seed=7))
    assert not np.array_equal(paths, tiny.forecast(ctx, H, 40, KNOBS, seed=8))
    np.testing.assert_array_equal(tiny.forecast(ctx, H, 8, KNOBS, seed=7), paths[:, :8])


@pytest.mark.parametrize("patch", [8, 64, "auto"])
def test_draws_follow_the_library_forecast(tiny: MoiraiBackend, series, patch) -> None:
    """Sampling only the forecast tokens (and our own `auto`) keeps MoiraiForecast's distribution."""
    import torch
    from scipy.stats import ks_2samp
    from uni2ts.model.moirai import MoiraiForecast

    ctx, n = _ctx(series, 2, length=64), 300
    model = MoiraiForecast(
        module=tiny._module, prediction_length=H, context_length=64 - H if patch == "auto" else 64,
        patch_size=patch, num_samples=n, target_dim=1, feat_dynamic_real_dim=0, past_feat_dynamic_real_dim=0,
    )  # fmt: skip
    target = torch.tensor(ctx.close[:, :, None], dtype=torch.float32)
    torch.manual_seed(0)
    with torch.inference_mode():
        library = model(target, torch.ones_like(target, dtype=torch.bool), torch.zeros((2, 64), dtype=torch.bool))
    ours = tiny.forecast(ctx, H, n, {**KNOBS, "patch_size": patch}, seed=1)
    pvalues = [ks_2samp(ours[o, :, h], library[o, :, h].numpy()).pvalue for o in range(2) for h in range(H)]
    assert min(pvalues) > 1e-3, pvalues


@pytest.mark.parametrize("patch", [16, "auto"])
def test_an_origins_draws_are_the_same_alone_as_in_any_batch(tiny: MoiraiBackend, series, patch, monkeypatch) -> None:
    monkeypatch.setattr(tiny, "passes", ContextPasses(0))  # every call runs its own forward pass
    origins = np.arange(len(series) - 45, len(series) - 40)
    knobs = {**KNOBS, "patch_size": patch, "use_covariates": True}
    assert_draws_per_origin(tiny, series, knobs, origins, H, 40, len(series) - 200, rtol=1e-5)


@pytest.mark.parametrize("patch", [16, "auto"])
def test_more_draws_of_an_origin_only_sample_from_its_kept_pass(tiny_dir: Path, series, patch) -> None:
    """The forward pass (and auto's pick of a patch size) is kept per origin: the next draws of a cache
    entry run no pass, and equal those of a backend that runs every pass afresh."""
    warm, cold = (MoiraiBackend(str(tiny_dir)) for _ in range(2))
    cold.passes = ContextPasses(0)
    knobs, ctx, seeds = {**KNOBS, "patch_size": patch, "use_covariates": True}, _ctx(series, 4), np.arange(4) * 7 + 1
    heads = []
    run = warm._forecast_params
    warm._forecast_params = lambda *a: heads.append(a[1].shape[0]) or run(*a)  # type: ignore[method-assign]
    for first in (0, MoiraiBackend.draw_block):  # the first draws of an entry, then the next ones
        np.testing.assert_array_equal(
            warm.forecast(ctx, H, N, knobs, seeds, first=first), cold.forecast(ctx, H, N, knobs, seeds, first=first)
        )
    assert warm.passes.passes == 4 and sum(heads) == (4 if patch == 16 else 4 * 6)  # auto: 5 sizes, then its pick
    warm.forecast(ctx, H, N, {**knobs, "use_covariates": False}, seeds)  # other inputs: passes of their own
    assert warm.passes.passes == 8


def test_patch_size_and_covariates(tiny: MoiraiBackend, series) -> None:
    ctx = _ctx(series, 2)
    alone = tiny.forecast(ctx, H, N, KNOBS, seed=0)
    for knobs in ({"use_covariates": True}, {"patch_size": "auto", "use_covariates": True}):
        paths = tiny.forecast(ctx, H, N, {**KNOBS, **knobs}, seed=0)
        assert paths.shape == alone.shape and np.isfinite(paths).all() and not np.array_equal(paths, alone)
    with pytest.raises(SweepError, match="patch_size must be one of 8, 16, 32, 64, 128, 'auto', got 12"):
        tiny.forecast(ctx, H, N, {**KNOBS, "patch_size": 12}, seed=0)
    with pytest.raises(ValueError, match="context_length > horizon"):
        tiny.forecast(_ctx(series, 2, length=H), H, N, {**KNOBS, "patch_size": "auto"}, seed=0)


@pytest.mark.parametrize(
    "knobs", [KNOBS, {**KNOBS, "patch_size": "auto"}, {**KNOBS, "patch_size": 64, "use_covariates": True}]
)
def test_no_leak(tiny: MoiraiBackend, series, knobs) -> None:
    origins = (
        np.array([len(series) - 40])
        if knobs["patch_size"] == "auto"
        else np.array([len(series) - 300, len(series) - 40])
    )
    assert_no_leak(tiny, series, knobs, origins, horizon=H, num_samples=8)


def test_sweep_run_end_to_end(sweep, tiny_dir: Path, tmp_path: Path) -> None:
    result = sweep(
        "run", "--symbols", "BTCUSDT", "ETHUSDT", "--lake", SHARED_LAKE, "--freq", "1h",
        "--backends", "moirai", "naive", "--checkpoint", f"moirai={tiny_dir}", "--trials", 3,
        "--val-origins", 40, "--test-origins", 20, "--out", tmp_path, "--run-id", "e2e",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    knobs = set(load_space("moirai").params)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        config = json.loads((tmp_path / "hyperparams" / "e2e" / f"{symbol}.json").read_text())
        moirai = config["backends"]["moirai"]
        assert (
            "error" not in moirai
            and moirai["trials"] + moirai["pruned_trials"] == 3
            and moirai["checkpoint"] == str(tiny_dir)
        )
        assert set(moirai["params"]) == knobs
        assert np.isfinite(moirai["validation"]["crps"]) and np.isfinite(moirai["test"]["crps"])
    # a live forecast from the bars before a recorded origin is the sweep's forecast there
    assert_live_forecast_is_recorded(tmp_path / "hyperparams" / "e2e" / "BTCUSDT.json", "moirai")
