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
FINETUNE_PREFIX = "ft_"  # fine-tuning knobs (sweeper.finetune.settings)
# One seed per origin (B,) from the forecaster, or one int for a whole batch (tests, direct calls).
Seeds = int | np.ndarray


def origin_rngs(seed: Seeds, count: int) -> list[np.random.Generator]:
    """One generator per origin. With per-origin seeds an origin's draws depend on its own context and
    seed alone, never on the other origins of its batch: what lets a live forecast of the same bars
    (`sweeper.api`) reproduce the sweep's draws exactly."""
    seeds = [[int(seed), i] for i in range(count)] if np.ndim(seed) == 0 else [int(s) for s in np.ravel(seed)]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} origins")
    return [np.random.default_rng(s) for s in seeds]


def batch_seed(seed: Seeds) -> int:
    """The one seed of a backend that samples a whole batch from one torch generator: its draws depend
    on the batch they were made in (the first origin's seed seeds the batch)."""
    return int(seed) if np.ndim(seed) == 0 else int(np.ravel(seed)[0])


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
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds
    ) -> np.ndarray:
        """Sample paths of the close for the `horizon` bars after each context: (B, num_samples, H).

        Draws must be independent, so the first n of them are a valid n-sample forecast (the cache
        relies on it). `seed` makes the draws reproducible: per origin where the backend draws with
        `origin_rngs`, per batch where it samples in torch (`batch_seed`).
        """

    @classmethod
    def init_checkpoint(cls, preset: str, out: Path) -> Path:
        """Write a randomly initialised checkpoint in the backend's real on-disk format (`sweep models init`)."""
        raise SweepError(f"backend {cls.name} has no checkpoint to initialise")

    @classmethod
    def model_knobs(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The knobs that change the samples: everything but scoring and speed knobs, and the fine-tuning
        knobs, which change the weights (the checkpoint's id) and never reach `forecast`."""
        return {
            k: v
            for k, v in params.items()
            if k not in SCORING_KNOBS and k not in cls.speed_knobs and not k.startswith(FINETUNE_PREFIX)
        }
