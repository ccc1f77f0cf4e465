"""What every engine is: a context manager for what it starts and stops (a process pool, Ray), whose `run`
fills one study's budget with trials. The studies themselves, and what selection takes from them, are
sweeper/search.py's."""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Self

import optuna

from sweeper.objective import SymbolTask
from sweeper.search import StudySettings

OnTrial = Callable[[optuna.Study], None]  # called with the study as its trials finish (progress bars)


class Engine(ABC):
    """Runs the studies of one sweep under one `StudySettings`; entering starts what the engine needs,
    leaving stops it, and the work happens in `run`, one study at a time."""

    def __init__(self, settings: StudySettings) -> None:
        self.settings = settings

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @abstractmethod
    def run(self, task: SymbolTask, backend: str, on_trial: OnTrial | None = None) -> optuna.Study:
        """Run the trials still missing from the study's budget and return the study; a SweepError when the
        backend cannot load (no weights), which the sweep records as that backend's outcome."""


def set_threads(n: int) -> None:
    """Give this process `n` compute threads, so parallel workers share the cores instead of fighting
    over them. Only touches torch when a backend already imported it."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
