"""A MarketGPT checkpoint directory: weights, config, tokenizer and the trainer's state.

    model.safetensors   weights (safetensors only: loading never runs pickled code)
    tokenizer.json      bin centres and scale (the model is meaningless without the bins it learned on)
    config.json         architecture, how and on what it was trained (`training`), written last
    trainer.pt          optimizer, scheduler and step, for `--resume` (read with weights_only=True)

Every file is written atomically; config.json records the step, and a resume refuses a trainer state from
another step, so a crash between two writes cannot silently mix weights of different steps.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from sweeper.atomic import read_json, write_bytes, write_json
from sweeper.device import torch_device
from sweeper.errors import SweepError
from sweeper.marketgpt.model import MarketGPT, ModelConfig
from sweeper.marketgpt.tokenizer import CandleTokenizer

FORMAT = "marketgpt/1"
FILES = ("model.safetensors", "tokenizer.json", "config.json")
TRAINER_FILE = "trainer.pt"


@dataclass(frozen=True)
class TrainingMeta:
    """What a checkpoint was trained on: the backend's leak and frequency guards read it."""

    preset: str
    symbols: tuple[str, ...]
    freq: str
    protocol: dict[str, Any]  # the sweep plan whose first validation origin the training data stops before
    step: int = 0
    trained_until: str | None = None  # last training bar (UTC, ISO); None: weights never trained
    train_bars: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pretrained:
    model: MarketGPT
    tokenizer: CandleTokenizer
    meta: TrainingMeta
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def save_pretrained(out: Path, model: MarketGPT, tokenizer: CandleTokenizer, meta: TrainingMeta) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out / "tokenizer.json")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes(out / "model.safetensors", save(state, metadata={"format": FORMAT}))
    write_json(out / "config.json", {"format": FORMAT, "model": asdict(model.cfg), "training": asdict(meta)})
    return out


def from_pretrained(path: str | Path, device: str = "cpu") -> Pretrained:
    """Load a checkpoint directory in eval mode on `device` (cpu, cuda[:i] or auto); a missing piece is
    named with how to make one."""
    path = Path(path).expanduser()
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise SweepError(
            f"MarketGPT checkpoint {path} is missing {', '.join(missing)}: train one with "
            "`sweep train marketgpt --symbols ... --freq ...` or initialise one with `sweep models init`"
        )
    doc = read_json(path / "config.json")
    if doc.get("format") != FORMAT:
        raise SweepError(f"{path / 'config.json'}: not a MarketGPT checkpoint (format {doc.get('format')!r})")
    cfg = ModelConfig(**doc["model"])
    training = dict(doc["training"])
    meta = TrainingMeta(**{**training, "symbols": tuple(training["symbols"])})
    tokenizer = CandleTokenizer.load(path / "tokenizer.json")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise SweepError(f"{path}: tokenizer has {tokenizer.vocab_size} bins, model expects {cfg.vocab_size}")
    model = MarketGPT(cfg)
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    except RuntimeError as exc:
        raise SweepError(f"{path / 'model.safetensors'}: weights do not match config.json ({exc})") from exc
    return Pretrained(model.to(torch_device(device)).eval(), tokenizer, meta, path)


def save_trainer_state(out: Path, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> None:
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step}
    buf = io.BytesIO()  # torch.save names its archive after the file: a temporary name would change the bytes
    torch.save(state, buf)
    write_bytes(Path(out) / TRAINER_FILE, buf.getvalue())


def load_trainer_state(path: Path, step: int) -> dict[str, Any]:
    """The optimizer/scheduler state saved with weights of `step`."""
    file = Path(path) / TRAINER_FILE
    if not file.is_file():
        raise SweepError(f"cannot resume {path}: no {TRAINER_FILE} (only checkpoints written by training resume)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if int(state["step"]) != step:
        raise SweepError(f"cannot resume {path}: {TRAINER_FILE} is from step {state['step']}, weights from {step}")
    return state
