"""Train MarketGPT on several symbols at once, on bars before the sweep's validation origins only.

AdamW (0.9, 0.95) with weight decay on matrices, linear warmup then cosine decay to 10% of the peak
rate, gradient clipping, the preset's gradient accumulation (micro-batches of batch_size); on CUDA,
mixed precision (bf16 where supported, else fp16 with loss scaling). Batches are random windows drawn
from a generator seeded by (seed, step), and dropout is reseeded per step, so a resumed run continues
exactly where it stopped.
`max_steps` counts steps over the checkpoint's whole life; `max_minutes` bounds this call only.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sweeper import output
from sweeper.data import load, resolve_lake
from sweeper.device import seeded, torch_device
from sweeper.errors import SweepError
from sweeper.marketgpt.checkpoint import (
    TrainingMeta,
    from_pretrained,
    load_trainer_state,
    save_pretrained,
    save_trainer_state,
)
from sweeper.marketgpt.corpus import Corpus, build_corpus
from sweeper.marketgpt.model import Batch, MarketGPT, TrainSettings, get_preset
from sweeper.marketgpt.tokenizer import CandleTokenizer
from sweeper.plan import Protocol
from sweeper.workspace import Workspace

MIN_LR_SHARE = 0.1
LOSS_WINDOW = 10  # first/last loss are means over this many steps: single steps are noisy


@dataclass(frozen=True)
class TrainSummary:
    out_dir: Path
    preset: str
    symbols: tuple[str, ...]
    freq: str
    device: str
    steps: int  # the checkpoint's step count after this call
    steps_run: int  # steps taken by this call
    first_loss: float | None  # mean loss of this call's first steps
    last_loss: float | None  # mean loss of this call's last steps
    minutes: float  # wall time of the whole call (data, bins, training, saving)
    tokenizer_seconds: float  # 0 on resume: the bins are reused
    trained_until: str | None
    train_bars: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out_dir": str(self.out_dir)}


class Windows:
    """Random windows of `length` bars from the corpus, uniform over all valid starts of all symbols."""

    def __init__(self, corpus: Corpus, tokenizer: CandleTokenizer, length: int) -> None:
        self.length = length
        self.tokens = np.concatenate([tokenizer.encode(p.returns) for p in corpus.pieces])
        self.rets = np.concatenate([p.returns / tokenizer.scale for p in corpus.pieces]).astype(np.float32)
        self.hours = np.concatenate([p.hours for p in corpus.pieces])
        self.dows = np.concatenate([p.dows for p in corpus.pieces])
        starts, offset = [], 0
        for p in corpus.pieces:  # a window never spans two symbols
            starts.append(offset + np.arange(max(len(p.returns) - length + 1, 0)))
            offset += len(p.returns)
        self.starts = np.concatenate(starts)
        if not self.starts.size:
            raise SweepError(f"no symbol has {length} training bars, the window this preset trains on")

    def batch(self, rng: np.random.Generator, size: int) -> Batch:
        idx = self.starts[rng.integers(0, self.starts.size, size)][:, None] + np.arange(self.length)
        return Batch(
            torch.from_numpy(self.tokens[idx]),
            torch.from_numpy(self.hours[idx]),
            torch.from_numpy(self.dows[idx]),
            torch.from_numpy(self.rets[idx]),
            torch.ones(idx.shape, dtype=torch.bool),
        )


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to MIN_LR_SHARE of the peak at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return MIN_LR_SHARE + (1 - MIN_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: MarketGPT, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Decay matrices only: biases, norms and per-vocab offsets stay undecayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def _progress(enabled: bool, total: int, done: int) -> tuple[Progress, TaskID]:
    bar = Progress(
        TextColumn("[bold]marketgpt"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    return bar, bar.add_task("train", total=total, completed=done, loss="-")


def _resumable(
    out: Path, preset: str, symbols: tuple[str, ...], freq: str, protocol: Protocol
) -> tuple[MarketGPT, CandleTokenizer, int, TrainSettings]:
    """The checkpoint to continue, if it was trained on exactly what is asked now."""
    if not (out / "config.json").exists():
        raise SweepError(f"nothing to resume: {out} holds no MarketGPT checkpoint")
    pre = from_pretrained(out, "cpu")
    m = pre.meta
    if (m.preset, m.symbols, m.freq, m.protocol) != (preset, symbols, freq, asdict(protocol)):
        raise SweepError(
            f"cannot resume {out}: it was trained with preset {m.preset}, symbols {' '.join(m.symbols)}, "
            f"freq {m.freq}, protocol {m.protocol}; resume with the same ones"
        )
    return pre.model, pre.tokenizer, m.step, TrainSettings(**m.settings)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Limit torch's and the BLAS/OpenMP pools' threads inside the block, then restore them."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def train(
    symbols: Sequence[str],
    freq: str | None,
    lake: str | Path | None = None,
    preset: str = "tiny",
    out_dir: str | Path | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    *,
    resume: bool = False,
    protocol: Protocol | None = None,
    vocab_size: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    warmup_steps: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    checkpoint_every: int = 250,
    threads: int | None = 1,
    workspace: Path = Path("."),
) -> TrainSummary:
    """Train (or resume) a checkpoint in `out_dir` (default WORKSPACE/models/marketgpt/<preset>-<freq>).

    `threads` caps torch and k-means threads for the call (None: library defaults). One is the default:
    on a shared 2-core machine two OpenMP threads wait on each other whenever the other core is busy
    (the tiny preset measured 1.23 s per step with two threads against 0.14 s with one).
    """
    started = time.perf_counter()
    symbols = tuple(symbols)
    protocol = protocol or Protocol()
    overrides = {"batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps}
    with cpu_threads(threads):
        spec = get_preset(preset)
        if not symbols:
            raise SweepError("marketgpt training needs at least one symbol (--symbols)")
        if max_steps is not None and max_steps < 0:
            raise SweepError(f"--max-steps must be >= 0, got {max_steps}")
        if max_minutes is not None and max_minutes <= 0:
            raise SweepError(f"--max-minutes must be > 0, got {max_minutes}")
        series = load(resolve_lake(lake), list(symbols), freq)
        freq = series[0].freq
        default = Workspace(workspace).model("marketgpt", f"{preset}-{freq}")
        out = Path(out_dir) if out_dir is not None else default
        dev = torch_device(device)

        settings = replace(spec.train, **{k: v for k, v in overrides.items() if v is not None})
        if (out / "config.json").exists() and not resume:
            raise SweepError(
                f"{out} already holds a MarketGPT checkpoint: pass --resume to continue it, or another --name"
            )
        tok_seconds = 0.0
        if resume:
            model, tokenizer, step, settings = _resumable(out, preset, symbols, freq, protocol)
            corpus = build_corpus(series, protocol, min_bars=model.cfg.context_length + 1)
        else:
            cfg = spec.model if vocab_size is None else replace(spec.model, vocab_size=vocab_size)
            corpus = build_corpus(series, protocol, min_bars=cfg.context_length + 1)
            t0 = time.perf_counter()
            with output.progress(enabled=progress) as step:  # k-means per OHLC component: seconds to a minute
                tokenizer = CandleTokenizer.fit(
                    corpus.returns(), cfg.vocab_size, seed=seed, on_component=lambda j: step("marketgpt bins", j, 4)
                )
            tok_seconds = time.perf_counter() - t0
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model, step = MarketGPT(cfg), 0
        cfg = model.cfg
        total = max_steps if max_steps is not None else settings.max_steps
        settings = replace(settings, max_steps=total)
        windows = Windows(corpus, tokenizer, cfg.context_length + 1)
        model.to(dev).train()
        opt = make_optimizer(model, settings.lr, settings.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings.warmup_steps, total))
        if resume:
            state = load_trainer_state(out, step)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])

        cuda = dev.type == "cuda"
        amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler(dev.type, enabled=cuda and amp_dtype == torch.float16)
        accum = settings.grad_accum

        def meta(trained: bool) -> TrainingMeta:
            return TrainingMeta(
                preset=preset,
                symbols=symbols,
                freq=freq,
                protocol=asdict(protocol),
                step=step,
                trained_until=str(corpus.trained_until) if trained else None,
                train_bars={p.symbol: len(p.returns) for p in corpus.pieces},
                settings=asdict(settings),
            )

        def save() -> None:
            save_trainer_state(out, opt, sched, step)
            save_pretrained(out, model, tokenizer, meta(step > 0))

        losses: list[float] = []
        deadline = None if max_minutes is None else started + 60 * max_minutes
        bar, task = _progress(progress, total, step)
        try:
            with bar, seeded(seed, dev):
                while step < total and (deadline is None or time.perf_counter() < deadline):
                    torch.manual_seed(seed * 1_000_003 + step)
                    opt.zero_grad(set_to_none=True)
                    loss = 0.0
                    for k in range(accum):
                        batch = windows.batch(np.random.default_rng([seed, step, k]), settings.batch_size).to(dev)
                        amp = torch.autocast("cuda", dtype=amp_dtype) if cuda else contextlib.nullcontext()
                        with amp:
                            parts = model.loss(batch, settings.alpha, settings.label_smoothing)
                        scaler.scale(parts.total / accum).backward()
                        loss += parts.total.item() / accum
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    sched.step()
                    step += 1
                    losses.append(loss)
                    bar.update(task, advance=1, loss=f"{np.mean(losses[-LOSS_WINDOW:]):.4f}")
                    if step % checkpoint_every == 0:
                        save()
        except KeyboardInterrupt:
            save()
            raise
        model.eval()
        save()
        n = min(LOSS_WINDOW, len(losses))
        return TrainSummary(
            out_dir=out,
            preset=preset,
            symbols=symbols,
            freq=freq,
            device=str(dev),
            steps=step,
            steps_run=len(losses),
            first_loss=float(np.mean(losses[:n])) if losses else None,
            last_loss=float(np.mean(losses[-n:])) if losses else None,
            minutes=(time.perf_counter() - started) / 60,
            tokenizer_seconds=tok_seconds,
            trained_until=meta(step > 0).trained_until,
            train_bars=meta(False).train_bars,
        )
