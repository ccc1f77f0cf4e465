"""Fine-tuning knobs: what a trial asks a backend's weights to be trained with before it forecasts.

The knobs live in `search_spaces/<backend>.yaml` next to the inference knobs, all prefixed `ft_`, and are
read here once, for every backend alike. `ft_steps` 0 (the default) is the pretrained model untouched; the
other knobs then change nothing and stay out of every key. Learning-rate schedules are the project's (warmup,
then constant, cosine or linear decay to 10% of the peak), applied to each library's own optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sweeper.errors import SweepError

PREFIX = "ft_"
SCHEDULES = ("constant", "cosine", "linear")
MIN_LR_SHARE = 0.1  # cosine and linear decay end at this share of the peak rate
RUNGS = (0.25, 0.5, 1.0)  # shares of ft_steps at which a trial reports its validation score
# MarketGPT's knobs before it fine-tuned through this path: a space naming one is told its replacement
RETIRED = {
    "finetune_epochs": "ft_steps (optimiser steps)",
    "finetune_lr": "ft_lr",
    "freeze_blocks": "ft_freeze (first_K)",
    "finetune_every": "ft_refit_every (origins per walk-forward block)",
}


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 0  # optimiser steps; 0: the pretrained weights
    lr: float = 1e-4
    warmup: float = 0.1  # share of the steps with a linear warmup
    schedule: str = "cosine"
    weight_decay: float = 0.01
    freeze: str = "none"  # none | first_K (input layers and the first K blocks) | head_only
    context: int = 256  # training window: bars the model sees ...
    prediction: int | None = None  # ... and bars it is trained to forecast (None: the backend's natural one)
    batch_size: int = 8
    accumulate: int = 1  # gradient accumulation (micro-batches per optimiser step)
    refit_every: int = 0  # walk-forward: re-fit before every block of this many origins; 0: once per split
    lora_rank: int = 0  # > 0: rank-r adapters (peft's LoRA) on the trainable blocks instead of their weights
    lora_alpha: float = 16.0  # the adapters' update is scaled by lora_alpha / lora_rank

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Any]) -> FinetuneSettings:
        given = {k.removeprefix(PREFIX): v for k, v in knobs.items() if k.startswith(PREFIX)}
        unknown = sorted(set(given) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(PREFIX + f for f in cls.__dataclass_fields__)
            raise SweepError(f"unknown fine-tuning knob {PREFIX}{unknown[0]}: choose from {known}")
        floats = {"lr", "warmup", "weight_decay", "lora_alpha"}
        types = {**dict.fromkeys(floats, float), "schedule": str, "freeze": str}
        values = {k: None if v is None else types.get(k, int)(v) for k, v in given.items()}
        s = cls(**values)
        s.check()
        return s

    def check(self) -> None:
        rules = [
            (self.steps >= 0, f"ft_steps must be >= 0, got {self.steps}"),
            (self.lr > 0, f"ft_lr must be > 0, got {self.lr}"),
            (0 <= self.warmup < 1, f"ft_warmup is a share of the steps in [0, 1), got {self.warmup}"),
            (self.schedule in SCHEDULES, f"ft_schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}"),
            (self.weight_decay >= 0, f"ft_weight_decay must be >= 0, got {self.weight_decay}"),
            (self.context >= 2, f"ft_context must be >= 2 bars, got {self.context}"),
            (self.prediction is None or self.prediction >= 1, f"ft_prediction must be >= 1, got {self.prediction}"),
            (self.batch_size >= 1 and self.accumulate >= 1, "ft_batch_size and ft_accumulate must be >= 1"),
            (self.refit_every >= 0, f"ft_refit_every must be >= 0, got {self.refit_every}"),
            (self.lora_rank >= 0, f"ft_lora_rank must be >= 0 (0: train the weights themselves), got {self.lora_rank}"),
            (self.lora_alpha > 0, f"ft_lora_alpha must be > 0, got {self.lora_alpha}"),
        ]
        for ok, why in rules:
            if not ok:
                raise SweepError(why)
        self.frozen_blocks()

    @property
    def active(self) -> bool:
        return self.steps > 0

    @property
    def adapters(self) -> bool:
        """Whether LoRA adapters train the blocks (head_only trains no block, so ft_lora_rank changes nothing)."""
        return self.lora_rank > 0 and self.freeze != "head_only"

    def frozen_blocks(self) -> int | None:
        """K of first_K, 0 for none, None for head_only."""
        if self.freeze == "none":
            return 0
        if self.freeze == "head_only":
            return None
        k = self.freeze.removeprefix("first_")
        if self.freeze.startswith("first_") and k.isdigit() and int(k) >= 1:
            return int(k)
        raise SweepError(f"ft_freeze {self.freeze!r}: use none, head_only or first_K (K >= 1 blocks)")

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak rate at optimiser step `step` (0-based)."""
        warm = int(self.warmup * self.steps)
        if step < warm:
            return (step + 1) / warm
        if self.schedule == "constant":
            return 1.0
        progress = min((step - warm) / max(self.steps - warm, 1), 1.0)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.schedule == "cosine" else 1 - progress
        return MIN_LR_SHARE + (1 - MIN_LR_SHARE) * shape

    def rungs(self) -> list[int]:
        """Steps at which validation is scored, for multi-fidelity pruning (the last is ft_steps)."""
        return sorted({max(1, round(share * self.steps)) for share in RUNGS})

    def knobs(self) -> dict[str, Any]:
        """The settings as the knobs that made them (what the key and the config record). Without adapters
        the LoRA knobs change nothing and are left out, so keys and records from before them still match."""
        fields = asdict(self)
        if not self.adapters:
            del fields["lora_rank"], fields["lora_alpha"]
        return {PREFIX + k: v for k, v in fields.items()}


def is_finetune_knob(name: str) -> bool:
    return name.startswith(PREFIX)
