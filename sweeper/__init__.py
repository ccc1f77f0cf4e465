"""sweep: hyperparameter sweeps and honest model selection for OHLCV forecasting models.

`from sweeper import load_config` gives a config's predictor (`sweeper.api`); it is imported on first use,
so `import sweeper` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "load_config":
        from sweeper.api import load_config

        return load_config
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
