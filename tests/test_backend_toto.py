"""Toto backend: a tiny random checkpoint in the real format, loaded like a hub download, on real candles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sweeper.backends import backend_class
from sweeper.backends.toto import PRESETS, TotoBackend, samples_per_batch
from sweeper.errors import SweepError
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

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("toto")]

H, N = 3, 16
KNOBS = {"context_length": 128, "use_covariates": False, "samples_per_batch": 8}
PATCH = PRESETS["tiny"]["patch_size"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return TotoBackend.init_checkpoint("tiny", tmp_path_factory.mktemp("toto") / "tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> TotoBackend:
    return TotoBackend(str(tiny_dir), "cpu")


@pytest.fixture(scope="module")
def series():
    return shared_series("BTCUSDT", "1h", last=1000)


def _ctx(series, n: int, length: int = KNOBS["context_length"]):
    return contexts(series, np.arange(len(series) - 40 - n, len(series) - 40), length)


def test_registered_lazily_with_a_valid_space() -> None:
    assert backend_class("toto") is TotoBackend
    assert_imports_stay_light("sweeper.backends.toto")
    space = load_space("toto")
    assert space.defaults() is not None
    assert set(TotoBackend.model_knobs(space.defaults())) == {"context_length", "use_covariates"}


def test_init_checkpoint_writes_the_real_format_and_never_overwrites(tiny_dir: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in tiny_dir.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tiny_dir / "config.json").read_text()) == PRESETS["tiny"]
    with pytest.raises(SweepError, match="not an empty directory"):
        TotoBackend.init_checkpoint("tiny", tiny_dir)
    with pytest.raises(SweepError, match="unknown toto preset 'huge'"):
        TotoBackend.init_checkpoint("huge", tmp_path / "x")


def test_small_preset_has_the_published_shapes() -> None:
    """Toto-Open-Base-1.0 (151M parameters), built in memory only: its file would be 600 MB."""
    from sweeper.backends.toto import _toto

    model = _toto().model.toto.Toto(**PRESETS["small"])
    assert sum(p.numel() for p in model.parameters()) == 151_306_080


def test_bad_local_checkpoints_say_what_is_wrong(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"has no config\.json or model\.safetensors"):
        TotoBackend(str(tmp_path), "cpu")
    with pytest.raises(SweepError, match="is a file"):
        TotoBackend(str(tiny_dir / "config.json"), "cpu")
    with pytest.raises(SweepError, match="neither a directory nor a hub id"):
        TotoBackend(str(tmp_path / "missing" / "dir"), "cpu")


def test_shapes_and_reproducible_without_touching_the_global_rng(tiny: TotoBackend, series) -> None:
    import torch

    ctx = _ctx(series, 4)
    state = torch.get_rng_state()
    paths = tiny.forecast(ctx, H, N, KNOBS, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    assert paths.shape == (4, N, H) and paths.dtype == np.float32 and np.isfinite(paths).all()
    np.testing.assert_array_equal(paths, tiny.forecast(ctx, H, N, KNOBS, seed=7))
    assert not np.array_equal(paths, tiny.forecast(ctx, H, N, KNOBS, seed=8))
    assert all(len(np.unique(paths[o, :, 0])) > N // 2 for o in range(4))  # distinct draws per origin


def test_first_n_of_n_draws_are_the_n_draw_forecast(tiny: TotoBackend, series) -> None:
    ctx = _ctx(series, 3)
    many = tiny.forecast(ctx, H, 40, KNOBS, seed=1)  # one patch: chunked draws
    np.testing.assert_array_equal(tiny.forecast(ctx, H, 8, KNOBS, seed=1), many[:, :8])
    longer = tiny.forecast(ctx, PATCH + 1, 16, KNOBS, seed=1)  # two patches: the library's sampler
    np.testing.assert_array_equal(tiny.forecast(ctx, PATCH + 1, 8, KNOBS, seed=1), longer[:, :8])


@pytest.mark.parametrize("horizon", [H, PATCH + 1], ids=["one-patch", "decoded"])
def test_an_origins_draws_are_the_same_alone_as_in_any_batch(tiny: TotoBackend, series, horizon: int) -> None:
    origins = np.arange(len(series) - 45, len(series) - 40)
    assert_draws_per_origin(tiny, series, KNOBS, origins, horizon, 16, len(series) - 200, rtol=1e-5)


def test_samples_per_batch_always_divides_the_sample_count(tiny: TotoBackend, series) -> None:
    assert [samples_per_batch(n, k) for n, k in ((12, 8), (7, 32), (13, 8), (256, 32), (5, 0))] == [6, 7, 1, 32, 1]
    paths = tiny.forecast(_ctx(series, 2), PATCH + 2, 12, {**KNOBS, "samples_per_batch": 8}, seed=0)
    assert paths.shape == (2, 12, PATCH + 2) and np.isfinite(paths).all()


def test_samples_per_batch_reaches_the_backend_and_so_is_keyed(
    tiny_dir: Path, series, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was declared speed-only and left out of the key, and so never reached `forecast` at all: passed
    through, it turns out to reorder the library's draws past one patch."""
    from sweeper.cache import ForecastCache
    from sweeper.forecast import Forecaster

    seen: list[object] = []
    real = TotoBackend.forecast

    def spy(self, ctx, horizon, num_samples, knobs, seed, first=0):
        seen.append(knobs.get("samples_per_batch"))
        return real(self, ctx, horizon, num_samples, knobs, seed, first)

    monkeypatch.setattr(TotoBackend, "forecast", spy)
    fc = Forecaster(ForecastCache(tmp_path / "cache"), seed=0, device="cpu", checkpoints={"toto": str(tiny_dir)})
    origins = np.arange(len(series) - 40 - 2, len(series) - 40)
    draws = [fc.draw(series, origins, PATCH + 2, "toto", {**KNOBS, "samples_per_batch": k}, 16) for k in (4, 16)]
    assert list(dict.fromkeys(seen)) == [4, 16]  # every call (one per measured batch) saw its own value
    assert not np.allclose(draws[0], draws[1])  # other draws, so it must be (and is) in the key
    assert TotoBackend.model_knobs(KNOBS)["samples_per_batch"] == 8


def test_one_pass_draws_follow_the_library_sampler(tiny: TotoBackend, series) -> None:
    """Within one patch, the draws from one pass have the distribution of the library's repeated passes."""
    from scipy.stats import ks_2samp

    ctx = _ctx(series, 2, length=64)
    knobs = {**KNOBS, "samples_per_batch": 50}
    ours = tiny.forecast(ctx, H, 400, knobs, seed=3)
    library = tiny.forecast(ctx, PATCH + 1, 400, knobs, seed=4)[:, :, :H]  # past one patch: library path
    pvalues = [ks_2samp(ours[o, :, h], library[o, :, h]).pvalue for o in range(2) for h in range(H)]
    assert min(pvalues) > 1e-3, pvalues


def test_covariates_feed_the_close_forecast(tiny: TotoBackend, series) -> None:
    ctx = _ctx(series, 2)
    alone = tiny.forecast(ctx, H, N, KNOBS, seed=0)
    joint = tiny.forecast(ctx, H, N, {**KNOBS, "use_covariates": True}, seed=0)
    assert joint.shape == alone.shape and np.isfinite(joint).all() and not np.array_equal(joint, alone)


@pytest.mark.parametrize(("covariates", "horizon"), [(False, H), (True, H), (False, PATCH + 1)])
def test_no_leak(tiny: TotoBackend, series, covariates: bool, horizon: int) -> None:
    origins = np.array([len(series) - 300, len(series) - 40])
    assert_no_leak(tiny, series, {**KNOBS, "use_covariates": covariates}, origins, horizon=horizon, num_samples=8)


def test_sweep_run_end_to_end(sweep, tiny_dir: Path, tmp_path: Path) -> None:
    result = sweep(
        "run", "--symbols", "BTCUSDT", "ETHUSDT", "--lake", SHARED_LAKE, "--freq", "1h",
        "--backends", "toto", "naive", "--checkpoint", f"toto={tiny_dir}", "--trials", 3,
        "--val-origins", 40, "--test-origins", 20, "--out", tmp_path, "--run-id", "e2e",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    knobs = set(load_space("toto").params)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        config = json.loads((tmp_path / "hyperparams" / "e2e" / f"{symbol}.json").read_text())
        toto = config["backends"]["toto"]
        assert (
            "error" not in toto and toto["trials"] + toto["pruned_trials"] == 3 and toto["checkpoint"] == str(tiny_dir)
        )
        assert set(toto["params"]) == knobs
        assert np.isfinite(toto["validation"]["crps"]) and np.isfinite(toto["test"]["crps"])
    # a live forecast from the bars before a recorded origin is the sweep's forecast there: toto's, and the
    # ensemble's, a mixture with toto in it
    config = tmp_path / "hyperparams" / "e2e" / "BTCUSDT.json"
    assert "toto" in json.loads(config.read_text())["ensemble"]["weights"]
    assert_live_forecast_is_recorded(config, "toto")
    assert_live_forecast_is_recorded(config, "toto", ensemble=True)
