"""MarketGPT training: only bars before the sweep's validation origins, the loss falls, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper.data import Series
from sweeper.errors import SweepError
from sweeper.marketgpt.checkpoint import from_pretrained
from sweeper.marketgpt.corpus import build_corpus, training_cut
from sweeper.marketgpt.train import TrainSummary, train
from sweeper.plan import Protocol, make_plan
from tests import marketgpt_support as support
from tests.marketgpt_support import common_window

pytestmark = pytest.mark.xdist_group("marketgpt")


@pytest.fixture(scope="module")
def mg_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return support.lake(tmp_path_factory)


@pytest.fixture(scope="module")
def mg_trained(tmp_path_factory: pytest.TempPathFactory) -> TrainSummary:
    return support.trained(tmp_path_factory)


def _poison_from(s: Series, cut: np.datetime64) -> Series:
    ohlcv = s.ohlcv.copy()
    ohlcv[s.ts >= cut, :4] *= 10.0
    return Series(s.symbol, s.freq, s.asset_class, s.ts, ohlcv, s.source)


def test_corpus_stops_before_the_earliest_validation_origin_of_any_symbol() -> None:
    btc, eth = common_window(("BTCUSDT", "ETHUSDT"), "1h", 3000)
    eth = Series(eth.symbol, eth.freq, eth.asset_class, eth.ts[:-100], eth.ohlcv[:-100], eth.source)
    protocol = Protocol()
    cut = training_cut([btc, eth], protocol)
    assert cut == eth.ts[make_plan(eth, protocol).val[0]] < btc.ts[make_plan(btc, protocol).val[0]]
    corpus = build_corpus([btc, eth], protocol, min_bars=129)
    for piece, s in zip(corpus.pieces, (btc, eth), strict=True):
        assert piece.last_ts < cut
        assert len(piece.returns) == int(np.sum(s.ts < cut)) - 1
    # bars at or after the cut never reach the training data
    poisoned = build_corpus([_poison_from(btc, cut), _poison_from(eth, cut)], protocol, min_bars=129)
    for a, b in zip(corpus.pieces, poisoned.pieces, strict=True):
        np.testing.assert_array_equal(a.returns, b.returns)
    with pytest.raises(SweepError, match="need at least 5000"):
        build_corpus([btc], protocol, min_bars=5000)


def test_short_training_run_lowers_the_loss(mg_trained: TrainSummary, mg_lake: Path) -> None:
    s = mg_trained
    assert s.steps == s.steps_run == support.STEPS
    assert s.last_loss < s.first_loss - 0.2, (s.first_loss, s.last_loss)
    pre = from_pretrained(s.out_dir)
    assert pre.meta.step == support.STEPS and pre.meta.symbols == ("BTCUSDT", "ETHUSDT") and pre.meta.freq == "1h"
    assert pre.tokenizer.vocab_size == pre.config.vocab_size == 64
    # trained on bars before the first validation origin of either symbol's sweep plan, never later
    series = common_window(("BTCUSDT", "ETHUSDT"), "1h", 4000)
    cut = training_cut(series, Protocol())
    assert np.datetime64(pre.meta.trained_until) < cut
    assert pre.meta.train_bars == {x.symbol: int(np.sum(x.ts < cut)) - 1 for x in series}


def test_resume_continues_exactly(mg_lake: Path, tmp_path: Path) -> None:
    kw = {"vocab_size": 16, "progress": False, "batch_size": 4}
    train(["BTCUSDT"], "1h", mg_lake, "tiny", tmp_path / "a", max_steps=4, **kw)
    with pytest.raises(SweepError, match="already holds"):
        train(["BTCUSDT"], "1h", mg_lake, "tiny", tmp_path / "a", max_steps=6, **kw)
    with pytest.raises(SweepError, match="resume with the same"):
        train(["ETHUSDT"], "1h", mg_lake, "tiny", tmp_path / "a", max_steps=6, resume=True, **kw)
    resumed = train(["BTCUSDT"], "1h", mg_lake, "tiny", tmp_path / "a", max_steps=6, resume=True, **kw)
    assert resumed.steps == 6 and resumed.steps_run == 2 and resumed.tokenizer_seconds == 0
    train(["BTCUSDT"], "1h", mg_lake, "tiny", tmp_path / "b", max_steps=6, **kw)
    a, b = from_pretrained(tmp_path / "a").model, from_pretrained(tmp_path / "b").model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


def test_training_twice_writes_the_same_checkpoint_and_so_the_same_draws(mg_lake: Path, tmp_path: Path) -> None:
    from sweeper.forecast import checkpoint_id

    kw = {"vocab_size": 16, "progress": False, "batch_size": 4, "max_steps": 2}
    for name in ("a", "b"):
        train(["BTCUSDT"], "1h", mg_lake, "tiny", tmp_path / name, **kw)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "trainer.pt" in files and files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for f in files:  # trainer.pt too: torch.save names its archive after the (temporary) file it writes
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert checkpoint_id(str(tmp_path / "a")) == checkpoint_id(str(tmp_path / "b"))


def test_cli(mg_lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sweep) -> None:
    monkeypatch.chdir(tmp_path)

    def call(*args: str):
        return sweep("train", "marketgpt", *args, "--lake", str(mg_lake))

    bad = call("--symbols", "BTCUSDT", "--preset", "huge")
    assert bad.exit_code == 2 and bad.stderr.strip().count("\n") == 0 and "unknown MarketGPT preset" in bad.stderr
    bad = call("--symbols", "BTCUSDT", "NOPE", "--freq", "1h")
    assert bad.exit_code == 2 and "symbol NOPE not found" in bad.stderr
    ok = call("--symbols", "BTCUSDT", "ETHUSDT", "--freq", "1h", "--max-steps", "2", "--vocab-size", "16")
    assert ok.exit_code == 0, ok.output
    assert "2 / 2" in ok.stdout  # steps this run / in all
    assert (tmp_path / "models/marketgpt/tiny-1h/config.json").is_file()
    again = call("--symbols", "BTCUSDT", "ETHUSDT", "--freq", "1h", "--max-steps", "3", "--resume", "--json")
    assert again.exit_code == 0, again.output
    done = json.loads(again.stdout)["checkpoints"][0]
    assert (done["steps_run"], done["steps"]) == (1, 3)
