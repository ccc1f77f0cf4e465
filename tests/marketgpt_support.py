"""Shared MarketGPT test fixtures: a small lake of real candles and one checkpoint trained on it.

Built once per process and shared by every MarketGPT test module (each wraps them in a fixture; pytest
would build a fixture imported into several modules once per module). The modules are grouped on one
xdist worker (`xdist_group("marketgpt")`), so the k-means fit and the short training run happen once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sweeper.data import Series
from sweeper.marketgpt.train import TrainSummary, train
from tests.helpers import shared_series

BARS = 4000
STEPS = 40  # with a short warmup and a high rate, enough to see the loss fall
VOCAB = 64  # small bins keep k-means and the logits cheap; the default (1024) is covered by the presets


def common_window(symbols: tuple[str, ...], freq: str, bars: int) -> list[Series]:
    """The last `bars` bars of each symbol that end no later than the earliest-ending one."""
    full = [shared_series(s, freq) for s in symbols]
    end = min(s.ts[-1] for s in full)
    out = []
    for s in full:
        stop = int(np.searchsorted(s.ts, end, side="right"))
        sl = slice(stop - bars, stop)
        out.append(Series(s.symbol, s.freq, s.asset_class, s.ts[sl].copy(), s.ohlcv[sl].copy(), s.source))
    return out


def write_lake(root: Path, series: list[Series]) -> Path:
    """Write series in the lake layout (one Parquet file per calendar month)."""
    for s in series:
        df = pl.DataFrame(
            {"ts": pl.Series(s.ts).dt.replace_time_zone("UTC")}
            | {c: s.ohlcv[:, i] for i, c in enumerate(("open", "high", "low", "close", "volume"))}
        )
        df = df.with_columns(pl.col("ts").dt.year().alias("_y"), pl.col("ts").dt.month().alias("_m"))
        for (y, m), part in df.partition_by(["_y", "_m"], as_dict=True, maintain_order=True).items():
            out = root / f"asset_class={s.asset_class}/freq={s.freq}/symbol={s.symbol}/year={y}/month={m:02d}"
            out.mkdir(parents=True, exist_ok=True)
            part.drop("_y", "_m").write_parquet(out / "part.parquet")
    return root


_built: dict[str, object] = {}


def lake(factory: pytest.TempPathFactory) -> Path:
    """BTCUSDT and ETHUSDT 1h, the same 4000 real hours of each (built once per session)."""
    if "lake" not in _built:
        _built["lake"] = write_lake(factory.mktemp("mg_lake"), common_window(("BTCUSDT", "ETHUSDT"), "1h", BARS))
    return _built["lake"]  # type: ignore[return-value]


def trained(factory: pytest.TempPathFactory) -> TrainSummary:
    """The tiny preset trained briefly on both symbols of `lake` (once per session)."""
    if "trained" not in _built:
        out = factory.mktemp("mg_ckpt") / "tiny"
        _built["trained"] = train(
            ["BTCUSDT", "ETHUSDT"], "1h", lake(factory), "tiny", out, max_steps=STEPS, vocab_size=VOCAB,
            batch_size=8, lr=3e-3, warmup_steps=5, progress=False,
        )  # fmt: skip
    return _built["trained"]  # type: ignore[return-value]
