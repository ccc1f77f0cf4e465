"""sweep: hyperparameter sweeps and honest model selection for OHLCV forecasting models."""

__version__ = "0.1.0"
