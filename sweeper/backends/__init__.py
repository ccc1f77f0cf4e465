"""Backend registry: names to classes, imported only when a sweep asks for them (model imports are slow)."""

from __future__ import annotations

import importlib
from pathlib import Path

from sweeper.atomic import write_json
from sweeper.backends.base import Backend
from sweeper.errors import SweepError

REGISTRY: dict[str, str] = {
    "naive": "sweeper.backends.baselines:Naive",
    "drift": "sweeper.backends.baselines:Drift",
    "seasonal_naive": "sweeper.backends.baselines:SeasonalNaive",
    "kronos": "sweeper.backends.kronos:KronosBackend",
    "marketgpt": "sweeper.backends.marketgpt:MarketGPTBackend",
    "toto": "sweeper.backends.toto:TotoBackend",
    "moirai": "sweeper.backends.moirai:MoiraiBackend",
    "moirai2": "sweeper.backends.moirai2:Moirai2Backend",
}
BASELINE = "naive"


def check_backend(name: str) -> str:
    if name not in REGISTRY:
        raise SweepError(f"unknown backend {name!r}: choose from {', '.join(REGISTRY)}")
    return name


def backend_class(name: str) -> type[Backend]:
    module, cls = REGISTRY[check_backend(name)].split(":")
    return getattr(importlib.import_module(module), cls)


# `sweep models init` leaves this file in the checkpoint folder: configs, summaries and reports then say
# that the numbers come from random weights. The weights' own files stay as the library writes them.
RANDOM_INIT_MARKER = "sweep_random_init.json"


def init_random_checkpoint(name: str, preset: str, out: Path) -> Path:
    """A randomly initialised checkpoint in the backend's real format, marked as random."""
    path = Path(backend_class(name).init_checkpoint(preset, out))
    note = "randomly initialised by `sweep models init`: its forecasts say nothing about the model's quality"
    write_json(path / RANDOM_INIT_MARKER, {"sweep_random_init": True, "backend": name, "preset": preset, "note": note})
    return path


def random_init(checkpoint: str | None) -> bool:
    """Whether a checkpoint is a local folder that `sweep models init` wrote (random weights)."""
    return checkpoint is not None and (Path(checkpoint).expanduser() / RANDOM_INIT_MARKER).is_file()
