"""A trading read-out of point forecasts: what a sign strategy would have made, after costs and a lag.

Statistical scores say how close a forecast is; this says whether its direction was worth trading (the
MarketGPT seed's trading metrics). Origins must be consecutive bars in time order (stride 1), so that
"the next origin" is "the next bar". At origin i the forecast's first step gives a signal,
sign(point / last_close - 1), or flat when that change is a tie (|change| <= `metrics.TIE`: a no-change
forecast such as naive's never trades). With execution lag L the position decided at origin i is held over the
bar of origin i + L (L = 0 is the optimistic reading: trading at the very close the forecast saw).
Each change of position costs `cost_bps` per unit traded (entering long from flat: 1 unit, flipping: 2);
the first L bars (nothing decided yet) are left out and the last position is marked to market.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sweeper.errors import SweepError
from sweeper.metrics import direction_hits, move


@dataclass(frozen=True)
class TradingReadout:
    directional_accuracy: float  # metrics.direction_hits on the first step: a tie on either side scores 0.5
    sharpe: float  # mean / std of per-bar strategy returns, times sqrt(periods_per_year) when given
    max_drawdown: float  # largest fall of compounded equity from a running peak, as a positive fraction
    win_rate: float  # share of bars held in the market that made money after costs
    profit_factor: float  # gross gains / gross losses over all traded bars (inf: no losses)
    total_return: float  # compounded, after costs
    bars: int  # bars traded (origins minus the lag)
    trades: int  # position changes

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _first_step(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        return x[:, 0]
    if x.ndim != 1:
        raise SweepError(f"trading read-out: {name} must be (origins,) or (origins, horizon), got {x.shape}")
    return x


def sign_strategy(
    point: np.ndarray,
    last_close: np.ndarray,
    actual: np.ndarray,
    cost_bps: float = 10.0,
    lag: int = 1,
    periods_per_year: float | None = None,
) -> TradingReadout:
    """Read out a long/short sign strategy from point forecasts and actual closes per origin (time order)."""
    pred, real, last = _first_step(point, "point"), _first_step(actual, "actual"), _first_step(last_close, "last")
    if not pred.shape == real.shape == last.shape:
        raise SweepError(f"trading read-out: shapes differ: point {pred.shape}, actual {real.shape}, last {last.shape}")
    if lag < 0 or pred.size <= lag:
        raise SweepError(f"trading read-out: need more origins ({pred.size}) than the execution lag ({lag})")
    pred_ret, real_ret = pred / last - 1.0, real / last - 1.0
    signal = move(pred_ret)
    position = signal[: pred.size - lag]  # held over bars lag, lag + 1, ...
    bar_ret = real_ret[lag:]
    turnover = np.abs(np.diff(position, prepend=0.0))
    pnl = position * bar_ret - cost_bps * 1e-4 * turnover
    equity = np.cumprod(1.0 + pnl)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    held = position != 0
    gains, losses = pnl[pnl > 0].sum(), -pnl[pnl < 0].sum()
    std = pnl.std(ddof=1) if pnl.size > 1 else 0.0
    sharpe = pnl.mean() / std * np.sqrt(periods_per_year or 1.0) if std > 0 else float("nan")
    return TradingReadout(
        directional_accuracy=float(np.mean(direction_hits(pred_ret, real_ret))),
        sharpe=float(sharpe),
        max_drawdown=float(np.max(1.0 - equity / peak)),
        win_rate=float(np.mean(pnl[held] > 0)) if held.any() else float("nan"),
        profit_factor=float(gains / losses) if losses > 0 else (float("inf") if gains > 0 else float("nan")),
        total_return=float(equity[-1] - 1.0),
        bars=int(pnl.size),
        trades=int(np.count_nonzero(turnover)),
    )
