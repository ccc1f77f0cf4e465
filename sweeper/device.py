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


def reseed(seed: int, device: torch.device) -> None:
    """Seed the generators that draw on `device`: the CPU's and, on CUDA, that device's; what
    `torch.manual_seed` does for them, without its lazy seeding of every CUDA device, which on a machine
    where CUDA is never initialised formats the caller's stack at each call (1.3 ms: 18% of a published-shape
    Moirai sweep on CPU, where every block of draws is seeded)."""
    import torch

    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for one block and restore the caller's RNG state afterwards."""
    import torch

    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        reseed(seed, device)
        yield


def release_memory() -> None:
    """Hand the CUDA allocator's cached blocks back after an out-of-memory error, so a smaller retry fits."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
