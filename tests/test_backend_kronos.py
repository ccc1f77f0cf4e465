"""Kronos backend: real loading code on random checkpoints, every sample path, no leak, offline errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sweeper.backends import backend_class
from sweeper.backends.kronos import (
    DEFAULT_MODEL,
    DEFAULT_TOKENIZER,
    PUBLISHED_PARAMS,
    KronosBackend,
    _features,
    _time_features,
)
from sweeper.errors import SweepError
from sweeper.passes import ContextPasses
from sweeper.plan import Contexts, contexts
from sweeper.space import SPACES_DIR, load_space
from tests.helpers import (
    SHARED_LAKE,
    assert_draws_per_origin,
    assert_live_forecast_is_recorded,
    assert_no_leak,
    shared_series,
)
from tests.pretrained_support import fake_hub_cache, use_hub_cache

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("kronos")]

KNOBS = {"context_length": 64, "temperature": 1.0, "top_p": 0.9, "top_k": 0, "clip": 5.0}
H, S = 3, 8


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return KronosBackend.init_checkpoint("tiny", tmp_path_factory.mktemp("kronos") / "tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> KronosBackend:
    return KronosBackend(str(tiny_dir), "cpu")


@pytest.fixture(scope="module")
def series():
    return shared_series("BTCUSDT", "1h", last=600)


def _origins(series, n: int) -> np.ndarray:
    return np.arange(len(series) - H - n, len(series) - H)


def test_registered_and_space_defaults_match_the_package() -> None:
    assert backend_class("kronos") is KronosBackend
    defaults = load_space("kronos").defaults()
    assert defaults is not None
    model = {k.name for k in KronosBackend.knobs}
    assert {k: defaults[k] for k in model} == {k: v for k, v in KronosBackend.defaults().items() if k in model}


def test_tiny_checkpoint_loads_through_the_hub_id_path(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The default hub ids resolve from the hub cache (offline), through from_pretrained, strictly, in eval mode."""
    fake_hub_cache(tmp_path, DEFAULT_MODEL, tiny_dir / "model")
    fake_hub_cache(tmp_path, DEFAULT_TOKENIZER, tiny_dir / "tokenizer")
    use_hub_cache(monkeypatch, tmp_path)
    model = KronosBackend(None, "auto")
    assert model.checkpoint == DEFAULT_MODEL and str(model.device) == "cpu"
    assert not model.model.training and not model.tokenizer.training
    local = KronosBackend(str(tiny_dir), "cpu")
    for a, b in ((model.model, local.model), (model.tokenizer, local.tokenizer)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(bool((sa[k] == sb[k]).all()) for k in sa)


def test_bad_local_layout_names_what_is_missing(tiny_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_dir / "model", tmp_path / "model")
    with pytest.raises(SweepError, match=r"tokenizer/config\.json"):
        KronosBackend(str(tmp_path), "cpu")


def test_small_preset_has_the_published_parameter_counts(tmp_path: Path) -> None:
    """Written to disk, loaded back strictly (no forward pass): the shapes of Kronos-small + Tokenizer-base."""
    loaded = KronosBackend(str(KronosBackend.init_checkpoint("small", tmp_path)), "cpu")
    counts = tuple(sum(p.numel() for p in m.parameters()) for m in (loaded.tokenizer, loaded.model))
    assert counts == PUBLISHED_PARAMS["small"] == (3_958_042, 24_741_376)


def test_shapes_reproducible_and_every_path_returned(tiny: KronosBackend, series) -> None:
    ctx = contexts(series, _origins(series, 3), KNOBS["context_length"])
    paths = tiny.forecast(ctx, H, S, KNOBS, seed=7)
    assert paths.shape == (3, S, H) and np.isfinite(paths).all()
    np.testing.assert_array_equal(paths, tiny.forecast(ctx, H, S, KNOBS, seed=7))
    assert not np.array_equal(paths, tiny.forecast(ctx, H, S, KNOBS, seed=8))
    for o in range(3):  # distinct draws, and not their average repeated
        assert len(np.unique(paths[o], axis=0)) > S // 2
        mean = paths[o].mean(axis=0)
        assert all(not np.allclose(p, mean) for p in paths[o])


@pytest.mark.parametrize("top_k", [0, 16])
def test_shared_context_sampling_equals_the_packages_sampler_draw_for_draw(tiny: KronosBackend, series, top_k) -> None:
    """The context once per origin, only new tokens per draw, origins batched: each origin's paths equal
    auto_regressive_inference (its predictor's 512-bar window, the origin alone, repeated once per draw)
    under that origin's block seed."""
    import torch
    from model.kronos import auto_regressive_inference

    from sweeper.backends.base import block_seed
    from sweeper.backends.kronos import CLOSE

    c, d = KNOBS["context_length"], KronosBackend.draw_block
    ctx = contexts(series, _origins(series, 3), c)
    knobs = {**KNOBS, "temperature": 0.7, "top_k": top_k}
    seeds = np.array([5, 91, 3])
    ours = tiny.forecast(ctx, H, 2 * d, knobs, seed=seeds)
    x = _features(ctx.values.astype(np.float64))
    mean, std = x.mean(1, keepdims=True), x.std(1, keepdims=True) + 1e-5
    z = np.clip((x - mean) / std, -5, 5).astype(np.float32)
    xs, ys = _time_features(ctx.ts), _time_features(ctx.future_ts(H))
    for u in range(3):
        rows = np.full(d, u)
        for j in range(2):  # each draw block is one call of the package's sampler under that block's seed
            torch.manual_seed(block_seed(int(seeds[u]), j))
            tensors = [torch.from_numpy(a[rows]) for a in (z, xs, ys)]
            theirs = auto_regressive_inference(
                tiny.tokenizer, tiny.model, *tensors, 512, H, T=0.7, top_k=top_k, top_p=0.9, sample_count=1
            )
            close = theirs[:, -H:, CLOSE] * std[u, :, CLOSE, None] + mean[u, :, CLOSE, None]
            np.testing.assert_allclose(ours[u, j * d : (j + 1) * d], close, rtol=1e-5)
    # a second call for the next block alone gives the same draws: what the cache extends with
    np.testing.assert_array_equal(tiny.forecast(ctx, H, d, knobs, seed=seeds, first=d), ours[:, d:])


def test_an_origins_draws_are_the_same_alone_as_in_any_batch(tiny: KronosBackend, series, monkeypatch) -> None:
    monkeypatch.setattr(tiny, "passes", ContextPasses(0))  # every call runs its own context pass
    knobs = {**KNOBS, "temperature": 0.7, "top_k": 16}
    origins = _origins(series, 5)
    assert_draws_per_origin(tiny, series, knobs, origins[1:], H, 2 * KronosBackend.draw_block, origins[0], rtol=1e-5)


def test_the_context_pass_runs_once_per_origin_whatever_the_sampling_knobs(tiny_dir: Path, series, monkeypatch) -> None:
    """Temperature, top_k and top_p, more draws of the same knobs, and a clip the context never reaches
    reuse an origin's context pass; draws are those of a backend that runs every pass afresh."""
    warm, cold = (KronosBackend(str(tiny_dir)) for _ in range(2))
    monkeypatch.setattr(cold, "passes", ContextPasses(0))
    c, origins, seeds = KNOBS["context_length"], _origins(series, 6), np.arange(6) * 7 + 1

    def both(idx: slice, knobs: dict, first: int = 0, rtol: float = 0.0) -> None:
        ctx = contexts(series, origins[idx], c)
        ours = warm.forecast(ctx, H, S, knobs, seeds[idx], first=first)
        np.testing.assert_allclose(ours, cold.forecast(ctx, H, S, knobs, seeds[idx], first=first), rtol=rtol)

    both(slice(0, 4), KNOBS)
    assert warm.passes.passes == 4
    both(slice(0, 4), {**KNOBS, "temperature": 0.6, "top_k": 16})  # other sampling knobs: the same passes
    both(slice(0, 4), KNOBS, first=S)  # the next draws of an entry
    reach = float(np.abs(_z(contexts(series, origins[:4], c))).max())
    both(slice(0, 4), {**KNOBS, "clip": reach + 1.0})  # a clip above every |z| leaves the inputs as they were
    assert warm.passes.passes == 4
    both(slice(0, 4), {**KNOBS, "clip": 0.5})  # a clip the contexts reach changes them: new passes
    assert warm.passes.passes == 8
    both(slice(2, 6), KNOBS, rtol=1e-5)  # two origins held, two new: the batch joined from both
    assert warm.passes.passes == 10
    warm.passes = ContextPasses(1)  # a budget below one origin's pass holds nothing
    both(slice(0, 2), KNOBS)
    assert warm.passes.passes == 2 and not warm.passes.held


def _z(ctx: Contexts) -> np.ndarray:
    x = _features(ctx.values.astype(np.float64))
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-5)


def test_time_features_and_future_timestamps_come_from_the_context(series) -> None:
    import pandas as pd
    from model.kronos import calc_time_stamps

    ctx = contexts(series, _origins(series, 2), 16)
    fut = ctx.future_ts(H)
    np.testing.assert_array_equal(fut[:, 0] - ctx.ts[:, -1], np.timedelta64(3600, "s"))
    np.testing.assert_array_equal(np.diff(fut, axis=1), np.timedelta64(3600, "s"))
    expected = calc_time_stamps(pd.Series(ctx.ts[0])).to_numpy(np.float32)
    np.testing.assert_array_equal(_time_features(ctx.ts)[0], expected)


def test_no_leak(tiny: KronosBackend, series) -> None:
    assert_no_leak(tiny, series, KNOBS, _origins(series, 2), horizon=H, num_samples=4)


def test_knobs_checked_and_dead_top_p_left_out_of_the_cache_key(tiny: KronosBackend, series) -> None:
    ctx = contexts(series, _origins(series, 1), KNOBS["context_length"])
    with pytest.raises(SweepError, match="temperature"):
        tiny.forecast(ctx, H, 2, {**KNOBS, "temperature": 0.0}, seed=0)
    params = {**KNOBS, "num_samples": 8, "aggregation": "mean"}
    assert "top_p" in KronosBackend.model_knobs(params)
    assert "top_p" not in KronosBackend.model_knobs({**params, "top_k": 16})


def test_sweep_run_end_to_end(tiny_dir: Path, tmp_path: Path) -> None:
    # the shipped space, cut to few draws and short contexts so three trials stay quick on two cores
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    shutil.copy(SPACES_DIR / "naive.yaml", spaces)
    space = yaml.safe_load((SPACES_DIR / "kronos.yaml").read_text())
    space["params"]["num_samples"] = {"type": "categorical", "choices": [4, 8], "default": 8}
    space["params"]["context_length"] = {"type": "categorical", "choices": [32, 64], "default": 64}
    (spaces / "kronos.yaml").write_text(yaml.safe_dump(space))
    sweep = Path(sys.executable).with_name("sweep")
    cmd = [
        str(sweep), "run", "--symbols", "BTCUSDT", "ETHUSDT", "--lake", str(SHARED_LAKE), "--freq", "1h",
        "--backends", "kronos", "naive", "--checkpoint", f"kronos={tiny_dir}", "--trials", "3",
        "--val-origins", "30", "--test-origins", "10", "--out", str(tmp_path), "--spaces", str(spaces),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = (tmp_path / "hyperparams").iterdir()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        config = json.loads((run_dir / f"{symbol}.json").read_text())
        kronos = config["backends"]["kronos"]
        assert "error" not in kronos and kronos["trials"] + kronos["pruned_trials"] == 3
        assert kronos["checkpoint"] == str(tiny_dir)
        assert {k.name for k in KronosBackend.knobs} <= set(kronos["params"])
        assert kronos["validation"] and kronos["test"]
    # a live forecast from the bars before a recorded origin is the sweep's forecast there
    assert_live_forecast_is_recorded(run_dir / "ETHUSDT.json", "kronos")
