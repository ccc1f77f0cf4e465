"""Forecasts for a plan's origins: models loaded once, origins in batches, draws cached.

This is the only place that calls a backend's `forecast`, and it counts the calls, so a test can prove a
cached trial never reaches the model. It is also what a live forecast (`sweeper.api`) calls, so both
seed an origin the same way: from the configuration and the timestamp of the origin's last context bar,
never from the data or the plan around it.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweeper.backends import backend_class
from sweeper.backends.base import CONTEXT_KNOB, Backend
from sweeper.cache import Cached, ForecastCache, cache_key
from sweeper.data import Series
from sweeper.errors import SweepError
from sweeper.finetune.settings import FinetuneSettings
from sweeper.plan import Plan, contexts

if TYPE_CHECKING:
    from sweeper.finetune.fit import FinetuneJob
    from sweeper.finetune.tuner import Tuner

RungScores = Callable[[int, Cached], None]  # (training step, the split's draws from that step's weights)


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


# The cache-key fields that seed the draws: what the configuration is, not which data or origins it ran on.
SEED_FIELDS = ("backend", "checkpoint", "knobs", "num_samples")


def origin_seeds(fields: Mapping[str, Any], seed: int, last_ts: np.ndarray) -> np.ndarray:
    """One seed per origin (B,) from the configuration's fields, the run seed and each context's last
    bar time: the same configuration forecasting the same bars gets the same draws, in a sweep or live."""
    base = int(cache_key({k: fields[k] for k in SEED_FIELDS})[:8], 16) ^ seed
    seconds = last_ts.astype("datetime64[s]").view(np.int64)
    return (base * 1_000_003 + seconds) % 2**31


class Forecaster:
    def __init__(
        self,
        cache: ForecastCache,
        seed: int = 0,
        device: str = "cpu",
        checkpoints: Mapping[str, str] | None = None,
        tuner: Tuner | None = None,
    ) -> None:
        from sweeper.finetune.fit import FinetuneStore
        from sweeper.finetune.tuner import Tuner

        self.cache = cache
        self.seed = seed
        self.device = device
        self.checkpoints = dict(checkpoints or {})
        self.model_calls = 0
        self._models: dict[tuple[str, str | None], Backend] = {}
        self.tuner = tuner or Tuner(FinetuneStore.beside(cache.root), seed, device)

    def model(self, backend: str, checkpoint: str | None = None) -> Backend:
        """Load a backend once per process per checkpoint (`checkpoint`: fine-tuned weights instead of the
        base; only the latest of those stays loaded)."""
        key = (backend, checkpoint or self.checkpoints.get(backend))
        if key not in self._models:
            if checkpoint is not None:
                base = (backend, self.checkpoints.get(backend))
                for old in [k for k in self._models if k[0] == backend and k != base]:
                    del self._models[old]
            cls = backend_class(backend)
            try:
                self._models[key] = cls(checkpoint=key[1], device=self.device)
            except SweepError:
                raise
            except Exception as exc:  # weights that exist but do not load: truncated, corrupt, a bad config
                why = " ".join(str(exc).split())[:200]
                raise SweepError(
                    f"{backend} checkpoint {key[1] or 'default'} cannot be loaded: {type(exc).__name__}: {why}"
                ) from exc
        return self._models[key]

    def base_checkpoint(self, backend: str) -> str:
        return self.checkpoints.get(backend) or str(backend_class(backend).default_checkpoint)

    def samples(
        self,
        series: Series,
        plan: Plan,
        split: str,
        backend: str,
        params: Mapping[str, Any],
        num_samples: int,
        on_rung: RungScores | None = None,
    ) -> Cached:
        """`num_samples` draws for every origin of `split`, from the cache when possible. With fine-tuning
        knobs (`ft_steps` > 0) the draws come from fine-tuned weights (see `finetune_jobs`); `on_rung`
        then gets the split's draws at each rung of the training steps (multi-fidelity)."""
        if not FinetuneSettings.from_knobs(params).active:
            return self._samples(series, plan, split, backend, params, num_samples)
        jobs = self.finetune_jobs(series, plan, split, backend, params)
        blocks = self.tuner.blocks(jobs[0].settings, plan.origins(split))
        parts = []
        for job, block in zip(jobs, blocks, strict=True):

            def hook(step: int, path: Path, block: np.ndarray = block) -> None:
                assert on_rung is not None
                on_rung(step, self._samples(series, plan, split, backend, params, num_samples, str(path), block))

            path = self.tuner.checkpoint(job, hook if on_rung is not None and len(blocks) == 1 else None)
            parts.append(self._samples(series, plan, split, backend, params, num_samples, str(path), block))
        seconds = sum(p.seconds_per_origin * b.size for p, b in zip(parts, blocks, strict=True))
        return Cached(np.concatenate([p.samples for p in parts]), seconds / max(plan.origins(split).size, 1))

    def finetune_jobs(
        self, series: Series, plan: Plan, split: str, backend: str, params: Mapping[str, Any]
    ) -> list[FinetuneJob]:
        """The fine-tuning behind a split: one job per block of origins, each cut at its first origin."""
        base = self.base_checkpoint(backend)
        settings = FinetuneSettings.from_knobs(params)
        blocks = self.tuner.blocks(settings, plan.origins(split))
        return [self.tuner.job(backend, base, checkpoint_id(base), series, int(b[0]), params) for b in blocks]

    def _samples(
        self,
        series: Series,
        plan: Plan,
        split: str,
        backend: str,
        params: Mapping[str, Any],
        num_samples: int,
        checkpoint: str | None = None,
        origins: np.ndarray | None = None,
    ) -> Cached:
        model = self.model(backend, checkpoint)
        idx = plan.origins(split) if origins is None else origins
        fields = {
            "seeding": "per-origin",  # draws of older runs were seeded per batch: never mix them
            **self._config_fields(model, params, num_samples),
            "data": series.fingerprint,
            "plan": plan.fingerprint(),
            "split": split,
            "seed": self.seed,
            **({} if origins is None else {"origins": [int(idx[0]), int(idx[-1])]}),
        }
        key = cache_key(fields)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        with self.cache.claim(key):  # another worker may be computing the same draws: wait, then reuse them
            hit = self.cache.get(key)
            return hit if hit is not None else self._compute(key, fields, model, series, plan, idx, num_samples)

    def draw(
        self,
        series: Series,
        origins: np.ndarray,
        horizon: int,
        backend: str,
        params: Mapping[str, Any],
        num_samples: int,
    ) -> np.ndarray:
        """`num_samples` draws (B, N, H) for `origins` of `series` with `params`, straight from the model
        (no cache): the draws the sweep cached for the same bars."""
        model = self.model(backend)
        return self._draw(self._config_fields(model, params, num_samples), model, series, origins, num_samples, horizon)

    @staticmethod
    def _config_fields(model: Backend, params: Mapping[str, Any], num_samples: int) -> dict[str, Any]:
        """What the configuration is (the SEED_FIELDS): backend, checkpoint, model knobs, draws."""
        return {
            "backend": model.name,
            "checkpoint": checkpoint_id(model.checkpoint),
            "knobs": type(model).model_knobs(params),
            "num_samples": num_samples,
        }

    def _draw(
        self,
        fields: Mapping[str, Any],
        model: Backend,
        series: Series,
        idx: np.ndarray,
        num_samples: int,
        horizon: int,
    ) -> np.ndarray:
        ctx_len = int(fields["knobs"][CONTEXT_KNOB])
        parts = []
        for lo in range(0, idx.size, model.batch_size):
            ctx = contexts(series, idx[lo : lo + model.batch_size], ctx_len)
            self.model_calls += 1
            seeds = origin_seeds(fields, self.seed, ctx.ts[:, -1])
            out = model.forecast(ctx, horizon, num_samples, fields["knobs"], seeds)
            parts.append(np.asarray(out, dtype=np.float32))
        samples = np.concatenate(parts)
        expected = (idx.size, num_samples, horizon)
        if samples.shape != expected:
            raise RuntimeError(f"{fields['backend']} returned samples of shape {samples.shape}, expected {expected}")
        return samples

    def _compute(
        self,
        key: str,
        fields: dict[str, Any],
        model: Backend,
        series: Series,
        plan: Plan,
        idx: np.ndarray,
        num_samples: int,
    ) -> Cached:
        start = time.perf_counter()
        samples = self._draw(fields, model, series, idx, num_samples, plan.protocol.horizon)
        result = Cached(samples, (time.perf_counter() - start) / max(idx.size, 1))
        self.cache.put(key, result, fields)
        return result
