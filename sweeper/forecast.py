"""Forecasts for a plan's origins: models loaded once, origins in chunks and batches, draws cached as needed.

A split's origins are cut into `CHUNKS` fixed chunks (the rungs of the multi-fidelity search: a trial is
scored chunk by chunk and may be stopped after any), each cached on its own with as many draws as were
asked for so far. This is the only place that calls a backend's `forecast`, and it counts the calls, so a
test can prove a cached trial never reaches the model and a pruned one reaches it less. It is also what a
live forecast (`sweeper.api`) calls, so both seed an origin the same way: from the configuration and the
timestamp of the origin's last context bar, never from the data or the plan around it.
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
from sweeper.batching import BatchSizes
from sweeper.cache import Cached, ForecastCache, cache_key
from sweeper.data import Series
from sweeper.errors import SweepError
from sweeper.finetune.fit import META as FINETUNE_META
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
    path (a CI checkout) give the same draws. A fine-tuned folder's `finetune.json` is left out: it says
    where the base checkpoint was, which is not what the weights are."""
    if checkpoint is None or not Path(checkpoint).expanduser().is_dir():
        return checkpoint
    root = Path(checkpoint).expanduser()
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != FINETUNE_META):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return f"sha256:{h.hexdigest()[:16]}"


# The cache-key fields that seed the draws: what the configuration is, not which data or origins it ran on
# (nor how many draws: draws come in seeded blocks, so any first n are the same).
SEED_FIELDS = ("backend", "checkpoint", "knobs", "draw_block")


def config_fields(model: Backend, params: Mapping[str, Any]) -> dict[str, Any]:
    """What the configuration is (the SEED_FIELDS): backend, checkpoint, model knobs, draw blocks."""
    return {
        "backend": model.name,
        "checkpoint": checkpoint_id(model.checkpoint),
        "knobs": type(model).model_knobs(params),
        "draw_block": model.draw_block,
    }


def origin_seeds(fields: Mapping[str, Any], seed: int, last_ts: np.ndarray) -> np.ndarray:
    """One seed per origin (B,) from the configuration's fields, the run seed and each context's last
    bar time: the same configuration forecasting the same bars gets the same draws, in a sweep or live."""
    base = int(cache_key({k: fields[k] for k in SEED_FIELDS})[:8], 16) ^ seed
    seconds = last_ts.astype("datetime64[s]").view(np.int64)
    return (base * 1_000_003 + seconds) % 2**31


CHUNKS = 4  # chunks of a split's origins: the rungs a trial is scored (and may be stopped) at


def chunk_bounds(n: int, chunks: int = CHUNKS) -> list[tuple[int, int]]:
    """(start, end) of each chunk of `n` origins: as equal as possible, never empty, in origin order."""
    k = max(1, min(chunks, n))
    ends = [round(n * (i + 1) / k) for i in range(k)]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def joined(parts: list[Cached]) -> Cached:
    """Chunks of one split's origins as one, in order; latency per origin averaged over them."""
    sizes = np.array([p.samples.shape[0] for p in parts], dtype=np.float64)
    seconds = float(np.dot(sizes, [p.seconds_per_origin for p in parts]) / max(sizes.sum(), 1))
    return Cached(np.concatenate([p.samples for p in parts]), seconds)


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
        self.batch_sizes: dict[str, BatchSizes] = {}  # origins per call, per backend
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
        chunks: range | None = None,
        on_rung: RungScores | None = None,
    ) -> Cached:
        """The first `num_samples` draws for the origins of `split` (of its `chunks` only, when given), from
        the cache where it holds them, extending it where it does not; latency pro-rated to `num_samples`.
        With fine-tuning knobs (`ft_steps` > 0) the draws come from fine-tuned weights (see `finetune_jobs`);
        `on_rung` then gets the split's draws at each rung of the training steps (multi-fidelity)."""
        bounds = chunk_bounds(plan.origins(split).size)
        wanted = range(len(bounds)) if chunks is None else chunks
        if FinetuneSettings.from_knobs(params).active:
            whole = self._finetuned(series, plan, split, backend, params, num_samples, on_rung)
            rows = np.concatenate([np.arange(*bounds[i]) for i in wanted])
            return Cached(whole.samples[rows], whole.seconds_per_origin)
        return joined([self._chunk(series, plan, split, backend, params, num_samples, bounds[i]) for i in wanted])

    def _finetuned(
        self,
        series: Series,
        plan: Plan,
        split: str,
        backend: str,
        params: Mapping[str, Any],
        num_samples: int,
        on_rung: RungScores | None,
    ) -> Cached:
        """Every origin of `split` from the weights fine-tuned for its blocks of origins (one block unless the
        space re-fits walk-forward), each block cached as one chunk keyed by its fine-tuned checkpoint."""
        jobs = self.finetune_jobs(series, plan, split, backend, params)
        idx = plan.origins(split)
        blocks = self.tuner.blocks(jobs[0].settings, idx)
        parts = []
        for job, block in zip(jobs, blocks, strict=True):
            lo = int(np.searchsorted(idx, block[0]))
            span = (lo, lo + block.size)

            def hook(step: int, path: Path, span: tuple[int, int] = span) -> None:
                assert on_rung is not None
                on_rung(step, self._chunk(series, plan, split, backend, params, num_samples, span, str(path)))

            path = self.tuner.checkpoint(job, hook if on_rung is not None and len(blocks) == 1 else None)
            parts.append(self._chunk(series, plan, split, backend, params, num_samples, span, str(path)))
        return joined(parts)

    def finetune_jobs(
        self, series: Series, plan: Plan, split: str, backend: str, params: Mapping[str, Any]
    ) -> list[FinetuneJob]:
        """The fine-tuning behind a split: one job per block of origins, each cut at its first origin."""
        base = self.base_checkpoint(backend)
        settings = FinetuneSettings.from_knobs(params)
        blocks = self.tuner.blocks(settings, plan.origins(split))
        return [self.tuner.job(backend, base, checkpoint_id(base), series, int(b[0]), params) for b in blocks]

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
        (no cache): the draws the sweep cached for the same bars (batched as the sweep's chunks batch them)."""
        model = self.model(backend)
        fields = config_fields(model, params)
        return self._draw(fields, model, series, origins, horizon, num_samples, 0)

    def _entry(
        self,
        series: Series,
        plan: Plan,
        split: str,
        backend: str,
        params: Mapping[str, Any],
        bounds: tuple[int, int],
        checkpoint: str | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A chunk's cache fields and key (`checkpoint`: fine-tuned weights instead of the base)."""
        fields = {
            "seeding": "per-origin-draws",  # draws of older runs were seeded otherwise: never mix them
            **config_fields(self.model(backend, checkpoint), params),
            "data": series.fingerprint,
            "plan": plan.fingerprint(),
            "split": split,
            "seed": self.seed,
            "chunk": list(bounds),
        }
        return fields, cache_key(fields)

    def _draw(
        self,
        fields: Mapping[str, Any],
        model: Backend,
        series: Series,
        idx: np.ndarray,
        horizon: int,
        more: int,
        first: int,
    ) -> np.ndarray:
        """Draws `first .. first + more - 1` for origins `idx`, batch by batch."""
        ctx_len = int(fields["knobs"][CONTEXT_KNOB])

        def call(batch: np.ndarray) -> np.ndarray:
            ctx = contexts(series, batch, ctx_len)
            self.model_calls += 1
            seeds = origin_seeds(fields, self.seed, ctx.ts[:, -1])
            return np.asarray(model.forecast(ctx, horizon, more, fields["knobs"], seeds, first=first), np.float32)

        sizes = self.batch_sizes.setdefault(model.name, BatchSizes(model.batch_size, model.batch_ceiling))
        new = np.concatenate(sizes.run(idx, (ctx_len, horizon), call))
        expected = (idx.size, more, horizon)
        if new.shape != expected:
            raise RuntimeError(f"{fields['backend']} returned samples of shape {new.shape}, expected {expected}")
        return new

    def _chunk(
        self,
        series: Series,
        plan: Plan,
        split: str,
        backend: str,
        params: Mapping[str, Any],
        num_samples: int,
        bounds: tuple[int, int],
        checkpoint: str | None = None,
    ) -> Cached:
        fields, key = self._entry(series, plan, split, backend, params, bounds, checkpoint)
        hit = self.cache.get(key, num_samples)
        if hit is not None and hit.draws >= num_samples:
            return hit.first(num_samples)
        model = self.model(backend, checkpoint)
        with self.cache.claim(key):  # another worker may be computing the same draws: wait, then reuse them
            hit = self.cache.get(key, num_samples)
            if hit is None or hit.draws < num_samples:
                hit = self._extend(key, fields, model, series, plan, split, bounds, hit, num_samples)
        return hit.first(num_samples)

    def _extend(
        self,
        key: str,
        fields: dict[str, Any],
        model: Backend,
        series: Series,
        plan: Plan,
        split: str,
        bounds: tuple[int, int],
        held: Cached | None,
        num_samples: int,
    ) -> Cached:
        """Draw the blocks after the ones held, up to `num_samples`, for the chunk's origins, and store them."""
        lo, hi = bounds
        idx = plan.origins(split)[lo:hi]
        first = held.draws if held is not None else 0
        more = -(-num_samples // model.draw_block) * model.draw_block - first
        start = time.perf_counter()
        new = self._draw(fields, model, series, idx, plan.protocol.horizon, more, first)
        seconds = (time.perf_counter() - start) / max(idx.size, 1)
        if held is not None:
            new, seconds = np.concatenate([held.samples, new], axis=1), seconds + held.seconds_per_origin
        result = Cached(new, seconds)
        self.cache.put(key, result, fields)
        return result
