"""Walk-forward fine-tuning: adapt a copy of the model to each block of origins as its past arrives.

The origins of a forecast call (in time order) are cut into blocks of `every` origins. Before forecasting
a block, a copy of the model is fine-tuned on the context of the block's FIRST origin: bars strictly
before every origin of the block. The copy carries over to the next block, which trains only on the
bars that became past since (older bars are context only, never a target twice), as the seed's
walk-forward loop does: predict a window, wait for its data, fine-tune on it, move on. Small learning
rate, a few epochs, optionally the first k blocks (and the input embeddings) frozen. The base model
is never modified, and everything is seeded, so the same call gives the same draws.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sweeper.backends.pretrained import seeded
from sweeper.errors import SweepError
from sweeper.marketgpt.model import Batch, MarketGPT
from sweeper.marketgpt.tokenizer import CandleTokenizer, candle_returns, time_features
from sweeper.plan import Contexts


@dataclass(frozen=True)
class FinetuneSettings:
    """The trial knobs finetune_epochs, finetune_lr, freeze_blocks, finetune_every."""

    epochs: int = 0  # 0: no fine-tuning
    lr: float = 1e-5
    freeze_blocks: int = 0  # the first k transformer blocks (k >= 1 freezes the input embeddings too)
    every: int = 168  # origins per walk-forward block (a week of 1h bars at stride 1)
    batch_size: int = 8  # windows per optimiser step

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Any]) -> FinetuneSettings:
        s = cls(
            int(knobs.get("finetune_epochs", cls.epochs)),
            float(knobs.get("finetune_lr", cls.lr)),
            int(knobs.get("freeze_blocks", cls.freeze_blocks)),
            int(knobs.get("finetune_every", cls.every)),
        )
        if s.epochs < 0 or s.lr <= 0 or s.freeze_blocks < 0 or s.every < 1:
            raise SweepError(
                f"marketgpt fine-tune knobs: need finetune_epochs >= 0, finetune_lr > 0, freeze_blocks >= 0, "
                f"finetune_every >= 1 (got {s.epochs}, {s.lr}, {s.freeze_blocks}, {s.every})"
            )
        return s


def context_windows(
    tokenizer: CandleTokenizer,
    values: np.ndarray,
    ts: np.ndarray,
    length: int,
    after: np.datetime64 | None = None,
) -> Batch | None:
    """Training windows (of at most `length` bars, half-overlapping, covering the end) from ONE context.

    Only bars later than `after` are targets; earlier ones are context. None when nothing is left to learn.
    """
    rets = candle_returns(values)
    n = len(rets)
    if n < 2:
        return None
    t = min(length, n)
    starts = np.arange(n - t, -1, -max(t // 2, 1))[::-1]
    if starts[0] != 0:
        starts = np.concatenate([[0], starts])
    idx = starts[:, None] + np.arange(t)
    hours, dows = time_features(ts[1:])
    target = np.ones(n, dtype=bool) if after is None else ts[1:] > after
    keep = target[idx][:, 1:].any(axis=1)
    if not keep.any():
        return None
    idx = idx[keep]
    return Batch(
        torch.from_numpy(tokenizer.encode(rets)[idx]),
        torch.from_numpy(hours[idx]),
        torch.from_numpy(dows[idx]),
        torch.from_numpy((rets / tokenizer.scale).astype(np.float32)[idx]),
        torch.from_numpy(target[idx]),
    )


def finetune(model: MarketGPT, batch: Batch, settings: FinetuneSettings, alpha: float, seed: int) -> None:
    """A few epochs of AdamW on `batch`, in place, with the first `freeze_blocks` blocks frozen."""
    frozen: list[torch.nn.Module] = []
    if settings.freeze_blocks:
        frozen = [*model.embed, model.in_proj, model.hour, model.dow, *model.blocks[: settings.freeze_blocks]]
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    params = [p for p in model.parameters() if id(p) not in frozen_ids]
    if not params:
        return
    dev = next(model.parameters()).device
    batch = batch.to(dev)
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    with seeded(seed, dev):
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(settings.epochs):
            order = torch.randperm(batch.tokens.shape[0], generator=gen)
            for lo in range(0, len(order), settings.batch_size):
                pick = order[lo : lo + settings.batch_size].to(dev)
                part = Batch(*(t[pick] for t in (batch.tokens, batch.hours, batch.dows, batch.rets, batch.mask)))
                opt.zero_grad(set_to_none=True)
                model.loss(part, alpha).total.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
        model.eval()


def walk_forward(
    model: MarketGPT,
    tokenizer: CandleTokenizer,
    ctx: Contexts,
    settings: FinetuneSettings,
    alpha: float,
    seed: int,
) -> Iterator[tuple[slice, MarketGPT]]:
    """Yield (block of origins, model fine-tuned on the past of that block); `model` itself stays as it is."""
    last = ctx.ts[:, -1]
    if np.any(last[1:] < last[:-1]):
        raise ValueError("walk-forward fine-tuning needs the origins of a batch in time order")
    tuned = copy.deepcopy(model)
    learned_until: np.datetime64 | None = None
    for lo in range(0, len(last), settings.every):
        windows = context_windows(tokenizer, ctx.values[lo], ctx.ts[lo], model.cfg.context_length + 1, learned_until)
        if windows is not None:
            finetune(tuned, windows, settings, alpha, seed + lo)
        learned_until = last[lo]
        yield slice(lo, min(lo + settings.every, len(last))), tuned
