"""What each metric is: its name, which way is better, how per-origin values become one number, how to show it.

Every place that ranks, compares, checks or prints a metric (the search's direction, selection, the
summary's skill, the ensemble column, promote, eval, the report) asks this registry, so no direction is
decided twice and a new metric is one entry here. The per-origin values themselves come from `metrics.py`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from sweeper.errors import SweepError

if TYPE_CHECKING:
    from sweeper.compare import Comparison

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Direction
    description: str
    reproducible: bool = True  # False: wall time; shown by eval, never a regression
    digits: int = 4

    @property
    def sign(self) -> float:
        """+1 when lower is better, -1 when higher is: `sign * value` is a loss."""
        return 1.0 if self.direction == "minimize" else -1.0

    def aggregate(self, per_origin: np.ndarray) -> float:
        """One number from per-origin values: the mean over origins where the metric is defined."""
        v = np.asarray(per_origin, dtype=np.float64)
        return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")

    def better(self, a: float, b: float) -> bool:
        return self.sign * a < self.sign * b

    def best(self, values: dict[str, float]) -> list[str]:
        """Names ranked best first; undefined (NaN) values last."""
        return sorted(
            values, key=lambda k: (not np.isfinite(values[k]), self.sign * values[k] if np.isfinite(values[k]) else 0)
        )

    def skill(self, cmp: Comparison) -> float | None:
        """Relative improvement of a over b, positive when a is better whatever the direction."""
        if not cmp.mean_b or not np.isfinite(cmp.diff):
            return None
        return float(-self.sign * cmp.diff / abs(cmp.mean_b))

    def beats(self, cmp: Comparison) -> bool:
        """a is better than b beyond noise: the test rejects equal skill and the difference favours a."""
        return not cmp.within_noise and self.sign * cmp.diff < 0

    def worse(self, recorded: float, now: float, tolerance: float) -> bool:
        """`now` is worse than `recorded` by more than `tolerance` (relative)."""
        slack = tolerance * max(abs(recorded), 1e-12)
        return self.sign * (now - recorded) > slack

    def show(self, x: float | None, digits: int | None = None) -> str:
        if x is None or not np.isfinite(x):
            return "-"
        return f"{x:.{digits or self.digits}g}"


REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("crps", "minimize", "continuous ranked probability score of the draws, mean over the horizon"),
        Metric("msis", "minimize", "interval score of the central 95% interval over the seasonal-naive scale"),
        Metric("mae", "minimize", "mean absolute error of the point forecast"),
        Metric("mse", "minimize", "mean squared error of the point forecast"),
        Metric("mase", "minimize", "MAE over the in-sample seasonal-naive MAE"),
        Metric("pct_return_mae", "minimize", "MAE of the return from the last close"),
        Metric("directional_accuracy", "maximize", "sign of the predicted move right; no direction scores 0.5"),
        Metric("latency_s", "minimize", "model seconds per origin", reproducible=False),
    )
}
NAMES = tuple(REGISTRY)


def get(name: str) -> Metric:
    if name not in REGISTRY:
        raise SweepError(f"unknown metric {name!r}: choose one of {', '.join(NAMES)}")
    return REGISTRY[name]


def checked() -> Iterable[Metric]:
    """The metrics `sweep eval --check` compares: every reproducible one."""
    return [m for m in REGISTRY.values() if m.reproducible]
