"""MarketGPT tokenizer: real returns survive the round trip within a bin, bins come from training data only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sweeper.errors import SweepError
from sweeper.marketgpt.tokenizer import CandleTokenizer, candle_returns, time_features
from tests.helpers import shared_series

pytestmark = pytest.mark.xdist_group("marketgpt")


@pytest.fixture(scope="module")
def fitted() -> tuple[CandleTokenizer, np.ndarray]:
    s = shared_series("ETHUSDT", "1h", last=6000)
    rets = candle_returns(s.ohlcv)
    return CandleTokenizer.fit(rets[:4000], vocab_size=128), s.ohlcv


def test_round_trip_within_bin_width(fitted: tuple[CandleTokenizer, np.ndarray]) -> None:
    tok, ohlcv = fitted
    rets = candle_returns(ohlcv)[4000:]  # bars the bins never saw
    back = tok.decode(tok.encode(rets))
    for j in range(4):
        c = tok.centres[j]
        assert np.all(np.diff(c) >= 0)
        inside = (rets[:, j] >= c[0]) & (rets[:, j] <= c[-1])
        assert inside.mean() > 0.99
        idx = np.clip(np.searchsorted(c, rets[inside, j]), 1, len(c) - 1)
        gap = c[idx] - c[idx - 1]  # the two centres around the return
        assert np.all(np.abs(back[inside, j] - rets[inside, j]) <= gap / 2 + 1e-15)
        # beyond the ends: the end bins
        assert np.all(back[~inside, j] == np.where(rets[~inside, j] < c[0], c[0], c[-1]))


def test_decode_to_prices_follows_the_real_path(fitted: tuple[CandleTokenizer, np.ndarray]) -> None:
    tok, ohlcv = fitted
    window = ohlcv[5000:5050, :4]
    tokens = tok.encode(candle_returns(window))
    prices = tok.to_prices(tokens, window[0, 3])
    assert prices.shape == (49, 4)
    # per-bar error is at most half a bin, compounded over the closes: stays within a few percent here
    np.testing.assert_allclose(prices[:, 3], window[1:, 3], rtol=0.03)
    one_step = tok.to_prices(tokens[:1], window[0, 3])[0]
    np.testing.assert_allclose(one_step, window[0, 3] * np.exp(tok.decode(tokens[0])))


def test_save_load_exact(fitted: tuple[CandleTokenizer, np.ndarray], tmp_path: Path) -> None:
    tok, _ = fitted
    tok.save(tmp_path / "tokenizer.json")
    back = CandleTokenizer.load(tmp_path / "tokenizer.json")
    np.testing.assert_array_equal(back.centres, tok.centres)
    np.testing.assert_array_equal(back.scale, tok.scale)


def test_fit_needs_more_bars_than_bins() -> None:
    rets = candle_returns(shared_series("BTCUSDT", "1d", last=100).ohlcv)
    with pytest.raises(SweepError, match="cannot fit 1024 bins on 99 bars"):
        CandleTokenizer.fit(rets)


def test_time_features() -> None:
    ts = np.array(["2024-01-01T00:00", "2024-01-06T13:00", "2024-01-07T23:00"], dtype="datetime64[us]")
    hours, dows = time_features(ts)
    assert hours.tolist() == [0, 13, 23]
    assert dows.tolist() == [0, 5, 6]  # Monday, Saturday, Sunday
