"""Which fine-tuned weights forecast which origins: the Forecaster's side of fine-tuning.

A split's origins are scored by weights trained only on bars strictly before its first origin; with
`ft_refit_every K` (walk-forward) the origins are cut into blocks of K and each block is scored by
weights trained on the bars before that block's first origin. Training symbols are the scored symbol
plus any `--finetune-on` symbols of the same frequency, each cut at the same timestamp.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.data import Series
from sweeper.errors import SweepError
from sweeper.finetune.base import Windows, finetuner_class
from sweeper.finetune.fit import FinetuneJob, FinetuneStore, RungHook, fit
from sweeper.finetune.settings import FinetuneSettings
from sweeper.plan import Protocol


class Tuner:
    def __init__(self, store: FinetuneStore, seed: int = 0, device: str = "cpu", extra: Sequence[Series] = ()) -> None:
        self.store = store
        self.seed = seed
        self.device = device
        self.extra = list(extra)
        self.trained = 0  # jobs this process trained (a test proves a repeated trial trains nothing)

    def training_series(self, series: Series) -> list[Series]:
        return [series, *(s for s in self.extra if s.symbol != series.symbol and s.freq == series.freq)]

    @staticmethod
    def blocks(s: FinetuneSettings, origins: np.ndarray) -> list[np.ndarray]:
        if not s.refit_every:
            return [origins]
        return [origins[lo : lo + s.refit_every] for lo in range(0, origins.size, s.refit_every)]

    def job(
        self, backend: str, base: str, base_id: str | None, series: Series, first_origin: int, params: Mapping[str, Any]
    ) -> FinetuneJob:
        s = FinetuneSettings.from_knobs(params)
        length = s.context + finetuner_class(backend).window_prediction(base, s)
        windows = Windows.before(self.training_series(series), series.ts[first_origin], length)
        return FinetuneJob(backend, base, base_id, s, windows, dict(params), self.seed)

    def checkpoint(self, job: FinetuneJob, on_rung: RungHook | None = None) -> Path:
        from sweeper.device import torch_device

        before = self.store.get(job.key())
        path = fit(job, self.store, torch_device(self.device), on_rung)
        self.trained += before is None
        return path

    def record(self, jobs: Sequence[FinetuneJob]) -> list[dict[str, Any]]:
        """What a config keeps of the weights behind a split: per block the key, cut and folder."""
        out = []
        for job in jobs:
            folder = self.store.path(job.key())
            out.append({"key": job.key(), "cut": str(job.windows.cut), "symbols": list(job.windows.symbols),
                        "data": job.windows.fingerprint(), "weights": str(folder.absolute())})  # fmt: skip
        return out


def recorded_checkpoint(
    block: Mapping[str, Any],
    backend: str,
    base: str,
    series: Sequence[Series],
    params: Mapping[str, Any],
    seed: int,
    store: FinetuneStore,
    device: str = "auto",
    say: Callable[[str], None] | None = None,
) -> Path:
    """The weights of one recorded block of a config (`backends.<name>.finetune.<split>[i]`): its folder
    while that still holds them, else re-fitted into `store` from the same bars before the recorded cut,
    seed and knobs (the key proves it: bars before the cut that changed since are refused)."""
    from sweeper.device import torch_device
    from sweeper.forecast import checkpoint_id

    folder = Path(block["weights"])
    kept = FinetuneStore(folder.parent).get(folder.name)
    if kept is not None:
        return kept
    by_symbol = {s.symbol: s for s in series}
    s = FinetuneSettings.from_knobs(params)
    length = s.context + finetuner_class(backend).window_prediction(base, s)
    cut = np.datetime64(block["cut"])
    windows = Windows.before([by_symbol[sym] for sym in block["symbols"]], cut, length)
    job = FinetuneJob(backend, base, checkpoint_id(base), s, windows, dict(params), seed)
    if job.key() != block["key"]:
        raise SweepError(
            f"{backend}: the bars before the fine-tuning cut {cut} changed since the config was recorded "
            f"(training data {windows.fingerprint()}, recorded {block['data']}): its weights cannot be re-fitted"
        )
    found = store.get(job.key())
    if found is not None:
        return found
    store.writable()  # one line before anything is said or trained
    if say is not None:
        say(f"{backend}: fine-tuned weights {folder} are gone; re-fitting them into {store.path(job.key())}")
    return fit(job, store, torch_device(device))


def make_checkpoint(
    backend: str,
    series: Sequence[Series],
    protocol: Protocol,
    knobs: Mapping[str, Any],
    out: Path,
    checkpoint: str | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """One fine-tuned checkpoint outside a sweep (`sweep finetune`): trained on the bars of every symbol
    before the earliest first validation origin of their sweep plans, written to `out` in the backend's
    format (with finetune.json). Bad knobs or data raise before anything is written."""
    import shutil
    import tempfile

    from sweeper.backends import backend_class
    from sweeper.device import torch_device
    from sweeper.forecast import checkpoint_id
    from sweeper.marketgpt.corpus import training_cut

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SweepError(f"{out} already exists and is not an empty directory: choose a new --out")
    settings = FinetuneSettings.from_knobs(knobs)
    if not settings.active:
        raise SweepError("nothing to fine-tune: set ft_steps > 0 (--set ft_steps=N)")
    base = checkpoint or str(backend_class(backend).default_checkpoint)
    length = settings.context + finetuner_class(backend).window_prediction(base, settings)
    windows = Windows.before(series, training_cut(series, protocol), length)
    job = FinetuneJob(backend, base, checkpoint_id(base), settings, windows, dict(knobs), seed)
    dev = torch_device(device)
    scratch = Path(tempfile.mkdtemp(prefix="sweep-finetune-"))  # nothing lands beside `out` until it is done
    try:
        trained = fit(job, FinetuneStore(scratch), dev, progress=progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            shutil.copytree(trained, staged, dirs_exist_ok=True)
            if out.exists():
                out.rmdir()
            os.replace(staged, out)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out
