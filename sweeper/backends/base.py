"""The one interface every forecasting backend implements.

A backend is loaded once (checkpoint, device) and then turns a batch of contexts into sample paths of
the close price. It never sees a bar at or after an origin: the caller cuts the contexts
(`sweeper.plan.contexts`), the backend only reads them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sweeper.errors import SweepError
from sweeper.plan import Contexts

# Knobs applied after the model ran: changing them re-scores cached samples and never calls the model.
SCORING_KNOBS = frozenset({"num_samples", "aggregation"})
# Knobs the caller applies before the model runs (it cuts the context to this many bars).
CONTEXT_KNOB = "context_length"


class Backend(ABC):
    """Subclasses set `name`, may set `default_checkpoint` and `batch_size`, and implement `forecast`."""

    name: ClassVar[str]
    default_checkpoint: ClassVar[str | None] = None
    batch_size: ClassVar[int] = 1_000_000  # origins per forward call; models set something that fits memory
    # Knobs that only change speed, not the distribution of the samples: left out of the cache key.
    speed_knobs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, checkpoint: str | None = None, device: str = "cpu") -> None:
        self.checkpoint = checkpoint or self.default_checkpoint
        self.device = device

    @abstractmethod
    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: int
    ) -> np.ndarray:
        """Sample paths of the close for the `horizon` bars after each context: (B, num_samples, H).

        Draws must be independent, so the first n of them are a valid n-sample forecast (the cache
        relies on it). `seed` makes the draws reproducible.
        """

    @classmethod
    def init_checkpoint(cls, preset: str, out: Path) -> Path:
        """Write a randomly initialised checkpoint in the backend's real on-disk format (`sweep models init`)."""
        raise SweepError(f"backend {cls.name} has no checkpoint to initialise")

    @classmethod
    def model_knobs(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The knobs that change the samples: everything but scoring and speed knobs."""
        return {k: v for k, v in params.items() if k not in SCORING_KNOBS and k not in cls.speed_knobs}
