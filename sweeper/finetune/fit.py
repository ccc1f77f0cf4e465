"""The one fine-tuning driver: every backend's weights are trained, keyed, stored and reused the same way.

A job is (backend, base checkpoint, fine-tuning knobs, training windows before a cut, seed). Its key
hashes the base checkpoint's id, the knobs, the fingerprint of the training bars, the cut and the seed;
the weights go to `<store>/<key>/` in the backend's own format with `finetune.json` beside them, written
to a temporary folder and renamed into place, under a lock per key, so a second trial, a resumed run or
another worker with the same job loads them instead of training. Training is a Lightning `Trainer` over
the library's own LightningModule: the project's warmup + decay schedule on the library's optimizer,
gradient clipping, gradient accumulation, mixed precision on CUDA (bf16 where supported), Rich progress
with the loss and the time left when asked. Multi-fidelity: snapshots at the rungs of `ft_steps` are
stored too, and `on_rung(step, path)` may raise (Optuna's TrialPruned) to stop a bad trial early.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.atomic import locked, read_json, write_json
from sweeper.cache import cache_key
from sweeper.errors import SweepError, out_of_memory
from sweeper.finetune.base import Finetuner, Windows, finetuner_class
from sweeper.finetune.settings import FinetuneSettings

META = "finetune.json"
RungHook = Callable[[int, Path], None]


@dataclass(frozen=True)
class FinetuneJob:
    backend: str
    base: str  # the checkpoint as given (hub id or folder)
    base_id: str | None  # what the key knows of it (sweeper.forecast.checkpoint_id)
    settings: FinetuneSettings
    windows: Windows
    knobs: Mapping[str, Any]  # the trial's knobs (the backend picks those that shape training)
    seed: int

    def fields(self, at_step: int) -> dict[str, Any]:
        s = self.settings.knobs()
        s.pop("ft_refit_every")  # when to re-fit, not how: the same cut gives the same weights
        return {
            "backend": self.backend,
            "base": self.base_id,
            "settings": s,
            "train_knobs": finetuner_class(self.backend).train_knobs(self.knobs),
            "data": self.windows.fingerprint(),
            "symbols": list(self.windows.symbols),
            "cut": str(self.windows.cut),
            "seed": self.seed,
            "at_step": at_step,
        }

    def key(self, at_step: int | None = None) -> str:
        return cache_key(self.fields(self.settings.steps if at_step is None else at_step))


class FinetuneStore:
    """Fine-tuned checkpoints by key under `root` (a run's `results/<run_id>/finetuned/`)."""

    def __init__(self, root: Path | None) -> None:
        self._root = None if root is None else Path(root)

    @classmethod
    def beside(cls, cache_root: Path | None) -> FinetuneStore:
        """The store of a run: `results/<run_id>/finetuned/`, next to its forecast cache."""
        return cls(None if cache_root is None else Path(cache_root).parent / "finetuned")

    @property
    def root(self) -> Path:
        """The folder; without one, a temporary folder made on first use (weights live for this process)."""
        if self._root is None:
            try:
                self._root = Path(tempfile.mkdtemp(prefix="sweep-finetuned-"))
            except OSError as exc:
                raise SweepError(f"cannot make a temporary folder for fine-tuned weights: {exc}") from None
        return self._root

    def writable(self) -> Path:
        """The folder, made if missing; one line (SweepError) when it cannot be, before anything trains."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "Permission denied")
        except OSError as exc:
            raise SweepError(f"cannot write fine-tuned weights into {self.root}: {exc.strerror or exc}") from None
        return self.root

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        folder = self.path(key)
        return folder if (folder / META).is_file() else None

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[None]:
        with locked(self.writable() / f"{key}.lock"):
            yield

    def put(self, key: str, save: Callable[[Path], None], meta: dict[str, Any]) -> Path:
        """Write the weights and then the metadata into a temporary folder and rename it into place."""
        out = self.path(key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.writable()))
        try:
            save(tmp)
            write_json(tmp / META, meta)
            if out.exists():  # a finished copy of the same job (same key, same bytes up to float order)
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out


def read_meta(folder: Path) -> dict[str, Any]:
    return read_json(Path(folder) / META)


def _freeze(tuner: Finetuner, s: FinetuneSettings) -> None:
    inputs, blocks, head = tuner.parts()
    k = s.frozen_blocks()
    if k is None:  # head_only: everything but the output head
        for m in [*inputs, *blocks]:
            m.requires_grad_(False)
        for m in head:
            m.requires_grad_(True)
    elif k:
        for m in [*inputs, *blocks[:k]]:
            m.requires_grad_(False)


def _with_schedule(module: Any, s: FinetuneSettings) -> None:
    """Keep the library's optimizer (its parameter groups, decay rules, betas), use the knobs' schedule."""
    import torch

    library = module.configure_optimizers

    def configure() -> dict[str, Any]:
        conf = library()
        opt = conf["optimizer"] if isinstance(conf, dict) else conf
        sched = torch.optim.lr_scheduler.LambdaLR(opt, s.lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    module.configure_optimizers = configure


class _Draws:
    """A map-style dataset of seeded windows: item i is always the same window (resume, reuse, tests)."""

    def __init__(self, windows: Windows, seed: int, n: int) -> None:
        self.windows, self.seed, self.n = windows, seed, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.windows.draw(self.seed, i)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for text in (
        "self.trainer",
        "no `val_dataloader`",
        "LeafSpec",
        "GPU available",
        "TPU available",
        "in eval mode",
        "no logger configured",
    ):
        warnings.filterwarnings("ignore", message=f".*{text}.*")


def _precision(device: Any) -> str:
    import torch

    if device.type != "cuda":
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def fit(
    job: FinetuneJob,
    store: FinetuneStore,
    device: Any,
    on_rung: RungHook | None = None,
    progress: bool = False,
) -> Path:
    """The fine-tuned checkpoint of `job`: loaded from the store, or trained now and stored."""
    s = job.settings
    rungs = s.rungs() if on_rung is not None else [s.steps]
    keys = {r: job.key(r) for r in rungs}
    done = {r: store.get(keys[r]) for r in rungs}
    if all(done.values()):
        for r in rungs:
            if on_rung is not None:
                on_rung(r, done[r])  # type: ignore[arg-type]
        return done[s.steps]  # type: ignore[return-value]
    tuner = finetuner_class(job.backend)(job.base, device)
    tuner.check(job.settings)  # before anything is written: a knob this model cannot train is bad input
    with store.claim(keys[s.steps]):
        final = store.get(keys[s.steps])
        if final is not None and on_rung is None:
            return final
        return _train(tuner, job, store, device, rungs, keys, on_rung, progress)


def _train(
    tuner: Finetuner,
    job: FinetuneJob,
    store: FinetuneStore,
    device: Any,
    rungs: list[int],
    keys: dict[int, str],
    on_rung: RungHook | None,
    progress: bool,
) -> Path:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from sweeper.device import seeded

    _quiet_lightning()
    s = job.settings
    module = tuner.module(s)
    module.train()  # from_pretrained loads in eval mode; a frozen Kronos tokenizer goes back to eval per step
    save = tuner.save
    if s.adapters:
        from sweeper.finetune import lora

        with seeded(job.seed, device):  # the adapters' initial A
            lora.adapt(module, tuner.parts(), s)
        save = lora.saving_merged(module, tuner.save)
    else:
        _freeze(tuner, s)
    _with_schedule(module, s)
    draws = _Draws(job.windows, job.seed, s.steps * s.accumulate * s.batch_size)
    loader = DataLoader(
        draws, batch_size=s.batch_size, shuffle=False, collate_fn=lambda w: tuner.collate(w, s, job.knobs)
    )
    saved: dict[int, Path] = {}

    def snapshot(step: int) -> Path:
        found = store.get(keys[step])
        if found is None:
            meta = {**job.fields(step), "base_checkpoint": job.base, "loss": losses[-1] if losses else None}
            found = store.put(keys[step], save, meta)
        saved[step] = found
        return found

    losses: list[float] = []

    class Rungs(L.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            step = trainer.global_step
            if outputs is not None:
                loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
                losses.append(float(loss))
            if step in keys and step not in saved and (batch_idx + 1) % s.accumulate == 0:
                path = snapshot(step)
                if on_rung is not None and step != s.steps:
                    on_rung(step, path)

    callbacks: list[Any] = [Rungs()]
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    with tempfile.TemporaryDirectory(prefix="sweep-lightning-") as scratch:
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=[device.index or 0] if device.type == "cuda" else 1,
            precision=_precision(device),
            max_steps=s.steps,
            max_epochs=1,
            accumulate_grad_batches=s.accumulate,
            gradient_clip_val=1.0,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=callbacks,
            default_root_dir=scratch,
        )
        previous = signal.getsignal(signal.SIGINT)
        try:
            with seeded(job.seed, device):
                trainer.fit(module, loader)
        except SystemExit as exc:  # Lightning turns Ctrl-C into sys.exit(1) and ignores later SIGINTs
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt from exc
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise
            raise SweepError(
                f"fine-tuning {job.backend} ran out of memory on {device} with ft_batch_size {s.batch_size} of "
                f"{job.windows.length} bars: lower ft_batch_size (ft_accumulate keeps the effective batch)"
            ) from None
    path = saved.get(s.steps) or snapshot(s.steps)
    if on_rung is not None:
        on_rung(s.steps, path)
    return path
