"""Origins per forward call: a backend's known-good size to start, larger where timing shows it pays.

The best batch depends on the model's shapes, the context length and the device. On the 2-core CPU, at
the published small shapes, horizon 1, no passes kept (ms per origin, one origin a call against batches):

- Moirai at context 512, 100 draws: 12 alone, 4 from 8 up;
- Toto at context 512, 32 draws: 55 alone, 15 at 16, 13 at 32;
- Kronos at context 256, 32 draws: flat, 96-124 from 1 to 32.

A backend's `batch_size` is where each (context length, horizon) starts: the CPU's good size. From there
the batch doubles, up to the backend's `batch_ceiling`, while a doubled batch is at least 10% cheaper per
origin, timed on the run's own batches (whole ones only). It then settles on the last size that paid: a
larger batch that gains less holds more memory for nothing. On a GPU the gain runs on until memory runs
out. A batch that runs out of memory halves the ceiling for that key and runs again.

It never starts lower, because the run's batches are not a clean experiment. Starting at one origin and
doubling (tried on 2026-12-06, `bench.published`, 100 trials) made the Kronos-small sweep slower: 35 s
became 44 s. Toto went from 13 s to 14 s and Moirai from 6 s to 7 s. The likely cause is kept passes
(`sweeper.passes`): once they are kept, a call is mostly sampling, whose per-call cost a batch shares. So
the first batches' timings mix passes run with passes reused.

Draws never depend on the batch (each origin draws from its own seeds, `Backend.block_seeds`), so the
choice changes speed only, never a forecast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sweeper.device import release_memory
from sweeper.errors import out_of_memory

GAIN = 0.9  # a doubled batch must cost at most this share of the smaller one's time per origin


@dataclass
class Ladder:
    """One key's search: the size in use, the size before it and its cost per origin, settled or not."""

    size: int
    ceiling: int
    below: tuple[int, float] | None = None  # (the size before this one, its seconds per origin)
    settled: bool = False

    def measured(self, seconds_per_origin: float) -> None:
        """A whole batch of `size` origins took this long per origin."""
        if self.settled:
            return
        if self.below is not None and seconds_per_origin > GAIN * self.below[1]:
            self.settled, self.size = True, self.below[0]
            return
        if self.size >= self.ceiling:
            self.settled = True
            return
        self.below = (self.size, seconds_per_origin)
        self.size = min(2 * self.size, self.ceiling)

    def out_of_memory(self) -> None:
        """A batch of `size` (> 1) did not fit: half of it is the most this key runs from now on."""
        self.ceiling = self.size // 2
        self.size, self.settled = self.ceiling, True


class BatchSizes:
    """Per (context length, horizon), the origins a call carries: `start`, doubled while it pays, never
    above `ceiling` (None: always `start`, as for the baselines, whose calls are vectorised arithmetic)."""

    def __init__(self, start: int, ceiling: int | None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.start = start
        self.ceiling = start if ceiling is None else max(ceiling, start)
        self.clock = clock
        self.ladders: dict[tuple[int, int], Ladder] = {}

    def chosen(self) -> dict[str, int]:
        """What each key runs at now, as `context/horizon: origins`."""
        return {f"{c}/{h}": lad.size for (c, h), lad in sorted(self.ladders.items())}

    def run(self, idx: np.ndarray, key: tuple[int, int], call: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
        """`call` over `idx` in batches of the key's size, in origin order, each batch timed."""
        if key not in self.ladders:
            self.ladders[key] = Ladder(self.start, self.ceiling, settled=self.start >= self.ceiling)
        lad = self.ladders[key]
        parts, lo = [], 0
        while lo < idx.size:
            batch = idx[lo : lo + lad.size]
            start = self.clock()
            try:
                out = call(batch)
            except (MemoryError, RuntimeError) as exc:
                if not out_of_memory(exc) or lad.size == 1:
                    raise
                lad.out_of_memory()
                release_memory()
                continue
            if batch.size == lad.size:
                lad.measured((self.clock() - start) / batch.size)
            parts.append(out)
            lo += batch.size
        return parts
