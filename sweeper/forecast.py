"""Forecasts for a plan's origins: models loaded once, origins in batches, draws cached.

This is the only place that calls a backend's `forecast`, and it counts the calls, so a test can prove a
cached trial never reaches the model.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.backends import backend_class
from sweeper.backends.base import CONTEXT_KNOB, Backend
from sweeper.cache import Cached, ForecastCache, cache_key
from sweeper.data import Series
from sweeper.plan import Plan, contexts


@functools.cache
def checkpoint_id(checkpoint: str | None) -> str | None:
    """What the cache key (and so the draws' seed) knows of a checkpoint: a hub id as it is, a local folder
    by the content of its files. Retraining into the same folder is a new key; the same weights at another
    path (a CI checkout) give the same draws."""
    if checkpoint is None or not Path(checkpoint).expanduser().is_dir():
        return checkpoint
    root = Path(checkpoint).expanduser()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return f"sha256:{h.hexdigest()[:16]}"


class Forecaster:
    def __init__(
        self,
        cache: ForecastCache,
        seed: int = 0,
        device: str = "cpu",
        checkpoints: Mapping[str, str] | None = None,
    ) -> None:
        self.cache = cache
        self.seed = seed
        self.device = device
        self.checkpoints = dict(checkpoints or {})
        self.model_calls = 0
        self._models: dict[tuple[str, str | None], Backend] = {}

    def model(self, backend: str) -> Backend:
        """Load a backend once per process (per checkpoint)."""
        key = (backend, self.checkpoints.get(backend))
        if key not in self._models:
            self._models[key] = backend_class(backend)(checkpoint=key[1], device=self.device)
        return self._models[key]

    def samples(
        self,
        series: Series,
        plan: Plan,
        split: str,
        backend: str,
        params: Mapping[str, Any],
        num_samples: int,
    ) -> Cached:
        """`num_samples` draws for every origin of `split`, from the cache when possible."""
        model = self.model(backend)
        knobs = type(model).model_knobs(params)
        fields = {
            "backend": backend,
            "checkpoint": checkpoint_id(model.checkpoint),
            "knobs": knobs,
            "data": series.fingerprint,
            "plan": plan.fingerprint(),
            "split": split,
            "num_samples": num_samples,
            "seed": self.seed,
        }
        key = cache_key(fields)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        with self.cache.claim(key):  # another worker may be computing the same draws: wait, then reuse them
            hit = self.cache.get(key)
            return hit if hit is not None else self._compute(key, fields, model, series, plan, split, num_samples)

    def _compute(
        self,
        key: str,
        fields: dict[str, Any],
        model: Backend,
        series: Series,
        plan: Plan,
        split: str,
        num_samples: int,
    ) -> Cached:
        knobs, backend = fields["knobs"], fields["backend"]
        idx = plan.origins(split)
        ctx_len = int(knobs[CONTEXT_KNOB])
        seed = (int(key[:8], 16) ^ self.seed) & 0x7FFFFFFF
        parts = []
        start = time.perf_counter()
        for lo in range(0, idx.size, model.batch_size):
            batch = idx[lo : lo + model.batch_size]
            self.model_calls += 1
            out = model.forecast(contexts(series, batch, ctx_len), plan.protocol.horizon, num_samples, knobs, seed + lo)
            parts.append(np.asarray(out, dtype=np.float32))
        seconds = time.perf_counter() - start
        result = Cached(np.concatenate(parts), seconds / max(idx.size, 1))
        expected = (idx.size, num_samples, plan.protocol.horizon)
        if result.samples.shape != expected:
            raise RuntimeError(f"{backend} returned samples of shape {result.samples.shape}, expected {expected}")
        self.cache.put(key, result, fields)
        return result
