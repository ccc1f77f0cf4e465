"""What each fine-tunable backend provides, and the training data every one of them reads.

A `Finetuner` loads a backend's base checkpoint, says which of its modules are the input layers, the
blocks and the output head (so freezing means the same everywhere), turns windows of bars into the
library's own training batch, hands back the library's own LightningModule (its loss and optimizer) and
writes the trained weights in the backend's real on-disk format, which the backend then loads like any
other checkpoint. The driver (`sweeper.finetune.fit`) does the rest once for all backends.

Training windows come only from bars strictly before the cut (the first origin the weights will be
scored on), drawn uniformly over every start of every training symbol from a generator seeded per draw.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sweeper.data import Series
from sweeper.errors import SweepError
from sweeper.finetune.settings import FinetuneSettings

if TYPE_CHECKING:
    import lightning as L
    import torch

FINETUNERS: dict[str, str] = {
    "toto": "sweeper.finetune.toto:TotoFinetuner",
    "moirai": "sweeper.finetune.moirai:MoiraiFinetuner",
    "kronos": "sweeper.finetune.kronos:KronosFinetuner",
    "marketgpt": "sweeper.finetune.marketgpt:MarketGPTFinetuner",
}


def finetuner_class(backend: str) -> type[Finetuner]:
    if backend not in FINETUNERS:
        raise SweepError(f"backend {backend} has no fine-tuning: ft_ knobs work for {', '.join(FINETUNERS)}")
    module, cls = FINETUNERS[backend].split(":")
    return getattr(importlib.import_module(module), cls)


@dataclass(frozen=True)
class Windows:
    """Training windows of `length` bars drawn from the bars before `cut` of each training series."""

    values: list[np.ndarray]  # per symbol (T_i, 5), only bars before the cut
    ts: list[np.ndarray]
    symbols: tuple[str, ...]
    freq: str
    cut: np.datetime64
    length: int

    @classmethod
    def before(cls, series: Sequence[Series], cut: np.datetime64, length: int) -> Windows:
        ends = [int(np.searchsorted(s.ts, cut, side="left")) for s in series]  # rows strictly before the cut
        if max(ends) < length:
            have = ", ".join(f"{s.symbol} {n}" for s, n in zip(series, ends, strict=True))
            raise SweepError(
                f"fine-tuning window of {length} bars (ft_context + ft_prediction) is longer than the data before "
                f"the cut {cut} ({have} bars); shorten ft_context or move the origins later"
            )
        return cls(
            [s.ohlcv[:n] for s, n in zip(series, ends, strict=True)],
            [s.ts[:n] for s, n in zip(series, ends, strict=True)],
            tuple(s.symbol for s in series),
            series[0].freq,
            cut,
            length,
        )

    def fingerprint(self) -> str:
        """Of the training bars themselves: bars at or after the cut cannot change it."""
        h = hashlib.sha256(repr((self.symbols, self.freq, self.length)).encode())
        for v, t in zip(self.values, self.ts, strict=True):
            h.update(np.ascontiguousarray(v).tobytes())
            h.update(t.astype("datetime64[us]").tobytes())
        return h.hexdigest()[:16]

    def draw(self, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Window number `index`: (length, 5) bars and their timestamps; the same for the same seed."""
        counts = np.array([max(len(v) - self.length + 1, 0) for v in self.values])
        pick = int(np.random.default_rng([seed, index]).integers(counts.sum()))
        which = int(np.searchsorted(np.cumsum(counts), pick, side="right"))
        start = pick - int(counts[:which].sum())
        return self.values[which][start : start + self.length], self.ts[which][start : start + self.length]


class Finetuner(ABC):
    """One backend's side of fine-tuning; the base checkpoint is loaded once per instance."""

    backend: ClassVar[str]

    def __init__(self, checkpoint: str, device: torch.device) -> None:
        self.checkpoint = checkpoint
        self.device = device

    @abstractmethod
    def parts(self) -> tuple[list[torch.nn.Module], list[torch.nn.Module], list[torch.nn.Module]]:
        """(input layers, transformer blocks in order, output head) of the trainable model."""

    default_prediction: ClassVar[int] = 16

    @classmethod
    def window_prediction(cls, checkpoint: str, s: FinetuneSettings) -> int:
        """Bars each window is trained to forecast (ft_prediction, or the backend's natural target), known
        before any weights are loaded: the training windows and the key depend on it."""
        return s.prediction or cls.default_prediction

    def prediction(self, s: FinetuneSettings) -> int:
        return self.window_prediction(self.checkpoint, s)

    def check(self, s: FinetuneSettings) -> None:
        """Refuse settings this model cannot train (one line naming the knob and the rule)."""
        k = s.frozen_blocks()
        blocks = len(self.parts()[1])
        if k is not None and k > blocks:
            raise SweepError(
                f"ft_freeze {s.freeze}: {self.backend} checkpoint {self.checkpoint} has only {blocks} blocks"
            )
        if s.adapters and k == blocks:
            raise SweepError(
                f"ft_lora_rank {s.lora_rank} with ft_freeze {s.freeze}: all {blocks} blocks of {self.backend} "
                f"checkpoint {self.checkpoint} are frozen, none is left to adapt"
            )

    @classmethod
    def train_knobs(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Inference knobs that also shape training (they go into the weights' key)."""
        return {}

    @abstractmethod
    def module(self, s: FinetuneSettings) -> L.LightningModule:
        """The library's LightningModule around the loaded weights (its loss and optimizer groups)."""

    @abstractmethod
    def collate(
        self, windows: list[tuple[np.ndarray, np.ndarray]], s: FinetuneSettings, knobs: Mapping[str, Any]
    ) -> Any:
        """The library's training batch from windows of (context + prediction) bars."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the current weights into `folder` in the backend's checkpoint format."""
