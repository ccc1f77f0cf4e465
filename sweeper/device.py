"""Which torch device a command runs on, and seeded torch blocks that leave the caller's RNG alone.

Shared by the model backends (`sweeper/backends/`), MarketGPT's training (`sweeper/marketgpt/`) and
fine-tuning (`sweeper/finetune/`); it lives here, below all three, so none of them imports another for it.
torch is imported inside the functions: importing `sweeper` stays cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sweeper.errors import SweepError

if TYPE_CHECKING:
    import torch


def torch_device(device: str) -> torch.device:
    """`auto` means CUDA when there is one, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SweepError(f"invalid device {device!r}: use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SweepError(f"device {device} asked for, but torch sees no CUDA device (use --device cpu)")
    return dev


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for one block and restore the caller's RNG state afterwards."""
    import torch

    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
