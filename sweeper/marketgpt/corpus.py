"""Training data for MarketGPT: the bars every symbol has strictly before any sweep origin.

Each series gets the plan a sweep builds (`make_plan` with the same `Protocol`), and the cut is the
EARLIEST first validation origin over all the symbols trained together: symbols move together, so a
model that saw BTC in March must not be scored on ETH in March either. Every bar at or after the cut
is dropped from every series; nothing later than the cut is read for tokens, bins or batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sweeper.data import Series
from sweeper.errors import SweepError
from sweeper.marketgpt.tokenizer import candle_returns, time_features
from sweeper.plan import Protocol, make_plan


@dataclass(frozen=True)
class Piece:
    """One symbol's training bars as model inputs: bar i of the piece is row i + 1 of the series."""

    symbol: str
    returns: np.ndarray  # (n, 4) log returns over the previous close
    hours: np.ndarray  # (n,)
    dows: np.ndarray  # (n,)
    last_ts: np.datetime64  # the last bar used


@dataclass(frozen=True)
class Corpus:
    pieces: tuple[Piece, ...]
    cut: np.datetime64  # every training bar is strictly before this time

    @property
    def trained_until(self) -> np.datetime64:
        return max(p.last_ts for p in self.pieces)

    def returns(self) -> np.ndarray:
        return np.concatenate([p.returns for p in self.pieces])


def training_cut(series: Sequence[Series], protocol: Protocol) -> np.datetime64:
    """The earliest first validation origin time over the series (each with its own sweep plan)."""
    return min(s.ts[int(make_plan(s, protocol).val[0])] for s in series)


def covered(series: Sequence[Series], protocol: Protocol, min_bars: int) -> list[Series]:
    """The series holding at least `min_bars` bars before the common cut: what fits bins on every series of
    a lake (`sweep models init marketgpt`), where one that starts after the others' cut has none to give."""
    cut = training_cut(series, protocol)
    return [s for s in series if int(np.searchsorted(s.ts, cut, side="left")) - 1 >= min_bars]


def build_corpus(series: Sequence[Series], protocol: Protocol, min_bars: int) -> Corpus:
    """Cut every series before the common cut; a symbol left with fewer than `min_bars` bars is an error."""
    cut = training_cut(series, protocol)
    pieces = []
    for s in series:
        rows = int(np.searchsorted(s.ts, cut, side="left"))  # rows [0, rows) are strictly before the cut
        if rows - 1 < min_bars:
            raise SweepError(
                f"{s.symbol} {s.freq} has {max(rows - 1, 0)} bars before the training cut {cut} "
                f"(the first validation origin of the sweep plan), need at least {min_bars}"
            )
        hours, dows = time_features(s.ts[1:rows])
        pieces.append(Piece(s.symbol, candle_returns(s.ohlcv[:rows]), hours, dows, s.ts[rows - 1]))
    return Corpus(tuple(pieces), cut)
