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
from sweeper.finetune.settings import is_finetune_knob
from sweeper.knob import COMMON, Knob, knob_values
from sweeper.plan import Contexts

# Knobs applied after the model ran: changing them re-scores cached samples and never calls the model.
SCORING_KNOBS = frozenset(k.name for k in COMMON if k.effect == "scoring")
# Knobs the caller applies before the model runs (it cuts the context to this many bars).
CONTEXT_KNOB = "context_length"
# One seed per origin (B,) from the forecaster, or one int for a whole batch (tests, direct calls).
Seeds = int | np.ndarray


def origin_rngs(seed: Seeds, count: int) -> list[np.random.Generator]:
    """One generator per origin, from its seed alone (`origin_seed_list`). With per-origin seeds an origin's
    draws depend on its own context and seed, never on the other origins of its batch: what lets a live
    forecast of the same bars (`sweeper.api`) reproduce the sweep's draws exactly."""
    return [np.random.default_rng(s) for s in origin_seed_list(seed, count)]


def origin_seed_list(seed: Seeds, count: int) -> list[int]:
    """One int seed per origin: the forecaster's per-origin seeds as they are, or, for one int (tests,
    direct calls), an independent seed per position derived from it."""
    seeds = [block_seed(int(seed), i) for i in range(count)] if np.ndim(seed) == 0 else [int(s) for s in np.ravel(seed)]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} origins")
    return seeds


class Backend(ABC):
    """Subclasses set `name`, may set `default_checkpoint` and `batch_size`, and implement `forecast`."""

    name: ClassVar[str]
    default_checkpoint: ClassVar[str | None] = None
    batch_size: ClassVar[int] = 1_000_000  # origins per forward call to start with; models set what fits memory
    batch_ceiling: ClassVar[int | None] = None  # models: the most it may grow to where timing shows it pays
    # The backend's own knobs (`sweeper.knob`), besides COMMON and the fine-tuning ones: `load_space`
    # checks a space against them, `knob_values` fills and checks what `forecast` is given.
    knobs: ClassVar[tuple[Knob, ...]] = ()
    # Draws come in blocks of this many, each from its own seed (`block_seeds`): the cache extends a set of
    # draws block by block, and draws a..b are the same whichever call made them. Backends whose draws are
    # almost free after one forward pass use large blocks; autoregressive ones, whose cost grows per draw, small.
    draw_block: ClassVar[int] = 32

    def __init__(self, checkpoint: str | None = None, device: str = "cpu") -> None:
        self.checkpoint = checkpoint or self.default_checkpoint
        self.device = device

    @abstractmethod
    def forecast(
        self,
        ctx: Contexts,
        horizon: int,
        num_samples: int,
        knobs: Mapping[str, Any],
        seed: Seeds,
        first: int = 0,
    ) -> np.ndarray:
        """Sample paths of the close for the `horizon` bars after each context: (B, num_samples, H).

        They are draws `first .. first + num_samples - 1` of one endless seeded sequence per origin (numpy
        backends, `origin_rngs`) or per origin and draw block (torch backends: block j of origin i from
        `block_seeds(seed, ...)[i][j]` alone; the forward pass batched, the sampling per origin), so
        `forecast(.., n, .., first=0)` followed by `forecast(.., m, .., first=n)` equals `forecast(.., n + m, ..)`
        (the cache extends entries so). `first` is a multiple of `draw_block`. Draws are independent, so any n
        of them are an n-sample forecast.
        """

    def block_seeds(self, seed: Seeds, count: int, first: int, num_samples: int) -> list[list[int]]:
        """Per origin (`count` of them), the seeds of the draw blocks that hold its draws `first .. first +
        num_samples - 1`: block j of origin i from `block_seed(seeds[i], j)` alone, so an origin's draws never
        depend on the other origins of its batch. Each backend samples every block in full and keeps the
        draws asked for."""
        if first % self.draw_block:
            raise ValueError(f"{self.name}: first draw {first} is not a multiple of the draw block {self.draw_block}")
        lo = first // self.draw_block
        hi = -(-(first + num_samples) // self.draw_block)
        return [[block_seed(o, j) for j in range(lo, hi)] for o in origin_seed_list(seed, count)]

    @classmethod
    def init_checkpoint(cls, preset: str, out: Path) -> Path:
        """Write a randomly initialised checkpoint in the backend's real on-disk format (`sweep models init`)."""
        raise SweepError(f"backend {cls.name} has no checkpoint to initialise")

    @classmethod
    def declared_knobs(cls) -> tuple[Knob, ...]:
        return COMMON + cls.knobs

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every declared knob's default (the backend's behaviour when a configuration leaves it out)."""
        return cls.knob_values({})

    @classmethod
    def knob_values(cls, knobs: Mapping[str, Any]) -> dict[str, Any]:
        """The knobs `forecast` was given, checked, with the declared defaults of those left out."""
        return knob_values(cls.name, cls.declared_knobs(), knobs)

    @classmethod
    def model_knobs(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The knobs that change the samples: everything but scoring knobs, and the fine-tuning
        knobs, which change the weights (the checkpoint's id) and never reach `forecast`."""
        return {k: v for k, v in params.items() if k not in SCORING_KNOBS and not is_finetune_knob(k)}


def block_seed(seed: int, block: int) -> int:
    """An independent 31-bit seed for draw block `block` of the sequence seeded by `seed`."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, block]).generate_state(1)[0]) & 0x7FFFFFFF
