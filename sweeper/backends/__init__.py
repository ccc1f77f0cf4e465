"""Backend registry: names to classes, imported only when a sweep asks for them (model imports are slow)."""

from __future__ import annotations

import importlib

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
