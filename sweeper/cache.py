"""The forecast cache: sample paths on disk, keyed by everything that changes them.

The key holds the backend, its checkpoint, the model-changing knobs, the data and plan fingerprints, the
split and the chunk of its origins (`forecast.chunk_bounds`). Sample count and aggregation are not in it:
an entry holds as many draws as trials have asked for so far, a trial asking for fewer takes the first n,
and one asking for more extends the entry (draws come in seeded blocks, so the extension equals the first
n of one larger pass). One entry per chunk of origins lets a trial stopped early by the pruner pay only for
the chunks it saw, and a later trial with the same model knobs continue from there. Files live in the run
folder, so a resumed sweep and other workers on the same folder reuse them; a small in-memory layer
(bounded in bytes) saves re-reading.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sweeper.atomic import locked, write_json, write_with


@dataclass(frozen=True)
class Cached:
    samples: np.ndarray  # (B, N, H) float32
    seconds_per_origin: float  # model wall time per origin spent on these N draws (all extensions)

    @property
    def draws(self) -> int:
        return int(self.samples.shape[1])

    def first(self, n: int) -> Cached:
        """The first n draws, with the model time pro-rated to them."""
        return Cached(self.samples[:, :n], self.seconds_per_origin * n / max(self.draws, 1))


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class ForecastCache:
    def __init__(self, root: Path | None, memory_bytes: int = 512 * 2**20) -> None:
        self.root = root
        self.memory_bytes = memory_bytes
        self._mem: OrderedDict[str, Cached] = OrderedDict()
        self._used = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        assert self.root is not None
        return self.root / f"{key}.npy", self.root / f"{key}.json"

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        """Hold the key's lock file while computing its draws, so processes sharing the folder (--jobs,
        Ray workers, machines on one filesystem) compute each entry once. A no-op without a folder."""
        if self.root is None:
            yield
            return
        with locked(self.root / f"{key}.lock"):
            yield

    def get(self, key: str, draws: int = 0) -> Cached | None:
        """The entry, from memory when it holds at least `draws` draws, else as on disk (another process may
        have extended it); None when there is none."""
        mem = self._mem.get(key)
        if mem is not None and mem.draws >= draws:
            self._mem.move_to_end(key)
            return mem
        if self.root is None:
            return mem
        npy, meta = self._paths(key)
        if not (npy.is_file() and meta.is_file()):
            return None
        info = orjson.loads(meta.read_bytes())
        hit = Cached(np.load(npy), float(info["seconds_per_origin"]))
        self._remember(key, hit)
        return hit

    def put(self, key: str, value: Cached, fields: dict[str, Any]) -> None:
        if self.root is not None:
            npy, meta = self._paths(key)

            def save(path: Path) -> None:
                with open(path, "wb") as fh:
                    np.save(fh, value.samples)

            write_with(npy, save)
            # the metadata file is written last: its presence marks a complete entry
            write_json(meta, {"seconds_per_origin": value.seconds_per_origin, "shape": value.samples.shape, **fields})
        self._remember(key, value)

    def _remember(self, key: str, value: Cached) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._used -= old.samples.nbytes
        size = value.samples.nbytes
        if size > self.memory_bytes:
            return
        self._mem[key] = value
        self._used += size
        while self._used > self.memory_bytes:
            _, old = self._mem.popitem(last=False)
            self._used -= old.samples.nbytes
