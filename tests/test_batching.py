"""Batch sizes grown by timing the run's own calls: doubling while it pays, halving when memory runs out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.batching import BatchSizes
from sweeper.cache import ForecastCache
from sweeper.forecast import Forecaster
from tests.helpers import shared_series

pytestmark = pytest.mark.slow


class Timed:
    """A model whose call over a batch of b origins costs b x `per_origin[b]` on a fake clock."""

    def __init__(self, per_origin: dict[int, float], fits: int = 1_000_000) -> None:
        self.per_origin, self.fits, self.now, self.sizes = per_origin, fits, 0.0, []

    def clock(self) -> float:
        return self.now

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.size > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.sizes.append(int(batch.size))
        self.now += batch.size * self.per_origin[batch.size]
        return batch * 10


def test_a_batch_doubles_while_it_is_cheaper_per_origin_and_settles_on_the_last_size_that_was() -> None:
    model = Timed({1: 12.0, 2: 8.0, 4: 5.0, 8: 4.0, 16: 3.9, 32: 3.8, 3: 6.0, 5: 5.0})
    sizes = BatchSizes(1, 64, clock=model.clock)
    idx = np.arange(100)
    out = np.concatenate(sizes.run(idx, (512, 1), model))
    np.testing.assert_array_equal(out, idx * 10)  # every origin once, in order
    assert model.sizes[:5] == [1, 2, 4, 8, 16]  # 16 gains 2.5% on 8: not worth its memory
    assert set(model.sizes[5:-1]) == {8} and sizes.chosen() == {"512/1": 8}
    model.sizes.clear()
    sizes.run(np.arange(16), (512, 1), model)
    assert model.sizes == [8, 8]  # settled: later calls of the key run at it
    sizes.run(np.arange(4), (256, 1), model)
    assert model.sizes[2:] == [1, 2, 1] and sizes.chosen()["256/1"] == 4  # another context length: its own search


def test_a_batch_starts_at_the_backends_size_and_never_grows_past_its_ceiling() -> None:
    model = Timed({n: 10.0 / n for n in range(1, 65)})  # always cheaper together
    sizes = BatchSizes(1, 16, clock=model.clock)
    sizes.run(np.arange(64), (64, 1), model)
    assert max(model.sizes) == 16 and sizes.chosen() == {"64/1": 16}
    flat = Timed({n: 1.0 for n in range(1, 65)})  # no gain from batching: the start stands, never less
    sizes = BatchSizes(8, 64, clock=flat.clock)
    sizes.run(np.arange(40), (64, 1), flat)
    assert flat.sizes == [8, 16, 8, 8] and sizes.chosen() == {"64/1": 8}
    capped = Timed({n: 1.0 for n in range(1, 65)})  # a ceiling that is no doubling of the start
    sizes = BatchSizes(16, 24, clock=capped.clock)
    sizes.run(np.arange(64), (64, 1), capped)
    assert capped.sizes[:3] == [16, 24, 16] and sizes.chosen() == {"64/1": 16}  # back to 16, not 24 // 2
    whole = Timed({64: 1.0})  # the baselines: one call per chunk, never measured
    BatchSizes(1_000_000, None, clock=whole.clock).run(np.arange(64), (64, 1), whole)
    assert whole.sizes == [64]


def test_a_batch_that_runs_out_of_memory_is_halved_and_run_again() -> None:
    model = Timed({n: 10.0 / n for n in range(1, 65)}, fits=6)
    sizes = BatchSizes(1, 64, clock=model.clock)
    out = np.concatenate(sizes.run(np.arange(30), (64, 24), model))
    np.testing.assert_array_equal(out, np.arange(30) * 10)  # nothing lost, nothing twice
    assert max(model.sizes) == 4 and sizes.chosen() == {"64/24": 4}
    never = Timed({1: 1.0}, fits=0)
    with pytest.raises(torch.OutOfMemoryError):  # one origin that does not fit is the machine's fault
        BatchSizes(1, 64, clock=never.clock).run(np.arange(3), (64, 1), never)
    broken = Timed({1: 1.0})
    broken.per_origin = {}  # a bug (KeyError) is never taken for memory
    with pytest.raises(KeyError):
        BatchSizes(1, 64, clock=broken.clock).run(np.arange(3), (64, 1), broken)


def test_the_measured_batch_never_changes_a_forecast(tmp_path) -> None:
    """Moirai's draws through the forecaster: batches grown by timing from one origin, or one per call."""
    from sweeper.backends.moirai import MoiraiBackend

    ckpt = MoiraiBackend.init_checkpoint("tiny", tmp_path / "moirai")
    series = shared_series("BTCUSDT", "1h", last=1500)
    origins = np.arange(len(series) - 60, len(series) - 20)
    knobs = {"context_length": 128, "patch_size": 32, "use_covariates": False}
    draws, calls = [], []
    for ceiling in (64, 1):
        fc = Forecaster(ForecastCache(None), checkpoints={"moirai": str(ckpt)})
        fc.batch_sizes["moirai"] = BatchSizes(1, ceiling)
        draws.append(fc.draw(series, origins, 4, "moirai", knobs, 32))
        calls.append(fc.model_calls)
    assert calls[1] == origins.size > calls[0]  # one origin per call, against batches of 1, 2, 4, ...
    np.testing.assert_allclose(draws[0], draws[1], rtol=1e-5)
