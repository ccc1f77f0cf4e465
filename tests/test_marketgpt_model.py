"""MarketGPT network: causal, its sampling cache agrees with a full pass, checkpoints round-trip, presets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper.errors import SweepError
from sweeper.marketgpt.checkpoint import TrainingMeta, from_pretrained, save_pretrained
from sweeper.marketgpt.model import PRESETS, MarketGPT, ModelConfig, PrefixCache, count_parameters
from sweeper.marketgpt.sampling import filter_logits
from sweeper.marketgpt.tokenizer import CandleTokenizer, candle_returns, time_features
from tests.helpers import shared_series

pytestmark = pytest.mark.xdist_group("marketgpt")

CFG = ModelConfig(vocab_size=64, n_layers=2, d_model=32, n_heads=4, d_ff=64, context_length=64, dropout=0.0)


@pytest.fixture(scope="module")
def inputs() -> tuple[CandleTokenizer, torch.Tensor, torch.Tensor, torch.Tensor]:
    s = shared_series("BTCUSDT", "1h", last=3000)
    rets = candle_returns(s.ohlcv)
    tok = CandleTokenizer.fit(rets[:2000], vocab_size=CFG.vocab_size)
    hours, dows = time_features(s.ts[1:])
    idx = np.arange(2000, 2048)[None, :] + np.array([0, 300, 600])[:, None]  # three windows of 48 bars
    as_t = torch.from_numpy
    return tok, as_t(tok.encode(rets)[idx]), as_t(hours[idx]), as_t(dows[idx])


def _model(seed: int = 0) -> MarketGPT:
    torch.manual_seed(seed)
    return MarketGPT(CFG).eval()


def test_causal_later_tokens_do_not_change_earlier_outputs(inputs) -> None:
    _, tokens, hours, dows = inputs
    model = _model()
    with torch.no_grad():
        h, _ = model(tokens, hours, dows)
        changed = tokens.clone()
        changed[:, 30:] = (changed[:, 30:] + 17) % CFG.vocab_size
        h2, _ = model(changed, hours, dows)
    torch.testing.assert_close(model.logits(h2[:, :30]), model.logits(h[:, :30]), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.steps(h2[:, :30]), model.steps(h[:, :30]), rtol=0, atol=1e-5)
    assert not torch.allclose(h2[:, 30:], h[:, 30:])


def test_prefix_cache_matches_a_full_pass(inputs) -> None:
    """Generating with the shared-context cache gives the logits a full forward pass gives."""
    _, tokens, hours, dows = inputs
    model = _model(1)
    n_ctx, samples = 40, 3
    with torch.no_grad():
        _, kvs = model(tokens[:, :n_ctx], hours[:, :n_ctx], dows[:, :n_ctx])
        cache = [PrefixCache(k, v, samples, 8) for k, v in kvs]

        def rep(x: torch.Tensor) -> torch.Tensor:  # every path continues with the same real bar
            return x.repeat_interleave(samples, 0)

        for j in range(n_ctx, 46):
            h, _ = model(rep(tokens[:, j : j + 1]), rep(hours[:, j : j + 1]), rep(dows[:, j : j + 1]), j, cache)
            full, _ = model(tokens[:, : j + 1], hours[:, : j + 1], dows[:, : j + 1])
            expected = rep(model.logits(full[:, -1]))
            torch.testing.assert_close(model.logits(h[:, -1]), expected, rtol=1e-4, atol=1e-4)


def test_save_load_gives_identical_outputs(inputs, tmp_path: Path) -> None:
    tok, tokens, hours, dows = inputs
    model = _model(2)
    meta = TrainingMeta(preset="tiny", symbols=("BTCUSDT",), freq="1h", protocol={"horizon": 1})
    save_pretrained(tmp_path / "ckpt", model, tok, meta)
    back = from_pretrained(tmp_path / "ckpt")
    assert back.meta == meta and back.config == CFG and not back.model.training
    with torch.no_grad():
        a, b = model(tokens, hours, dows)[0], back.model(tokens, hours, dows)[0]
    torch.testing.assert_close(back.model.logits(b), model.logits(a), rtol=0, atol=0)
    torch.testing.assert_close(back.model.steps(b), model.steps(a), rtol=0, atol=0)
    np.testing.assert_array_equal(back.tokenizer.centres, tok.centres)


def test_base_preset_is_the_seeds_87m_model() -> None:
    cfg = PRESETS["base"].model
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.context_length, cfg.vocab_size) == (
        12, 768, 12, 3072, 2048, 1024,
    )  # fmt: skip
    d, v, e = 768, 1024, 768 // 4
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 3072 + 3072) + (3072 * d + d)
    by_hand = (
        4 * v * e + (4 * e * d + d) + 24 * d + 7 * d  # OHLC embeddings, projection, hour and weekday
        + 12 * block + 2 * d  # blocks, final norm
        + (d * 4 * e + 4 * e) + 4 * v  # tied next-token head: projection and per-token biases
        + (d * d + d) + (d * 16 * 4 + 16 * 4)  # multi-step head
    )  # fmt: skip
    assert count_parameters(cfg) == by_hand == 87_691_328


def test_presets_are_valid_and_tiny_is_small() -> None:
    assert set(PRESETS) == {"tiny", "small", "base"}
    assert count_parameters(PRESETS["tiny"].model) < 300_000
    assert all(p.model.vocab_size == 1024 for p in PRESETS.values())


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))

    def keep(x: torch.Tensor) -> list[bool]:
        return torch.isfinite(x).squeeze(0).tolist()

    assert keep(filter_logits(logits, 1.0, 2, 1.0)) == [True, True, False, False]
    assert keep(filter_logits(logits, 1.0, 0, 0.7)) == [True, True, False, False]  # 0.5 + 0.3 reaches 0.7
    assert keep(filter_logits(logits, 1.0, 0, 0.4)) == [True, False, False, False]
    assert keep(filter_logits(logits, 1.0, 0, 1.0)) == [True] * 4
    sharp = filter_logits(logits, 0.5, 0, 1.0).softmax(-1)
    assert sharp[0, 0] > 0.5  # a low temperature sharpens


def test_config_checks() -> None:
    with pytest.raises(SweepError, match="divide"):
        dataclasses.replace(CFG, d_model=30)
