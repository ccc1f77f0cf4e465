"""Low-rank adaptation (peft's LoRA) of a backend's trainable blocks, merged into the weights it saves.

`ft_lora_rank` > 0 trains rank-r adapters on every linear layer of the blocks that `ft_freeze` leaves
trainable instead of those blocks' weights; the output head (and, with `ft_freeze: none`, the input layers)
still train in full, as peft's `modules_to_save` would. With `head_only` no block trains, so there is
nothing to adapt and the LoRA knobs are ignored (and left out of the key).

The adapters are a way to train, not a format: whenever a fine-tuned checkpoint is written, each adapted
layer is shown to the backend's own `save` as its base layer with `W + (alpha / r) B A` in place of `W`, so
the store holds the backend's real checkpoint, loaded, keyed, promoted and evaluated like a fully
fine-tuned one, and nothing downstream knows about peft. The base weights in training are put back bit for
bit after each save (no merge/unmerge round trip), so a run that snapshots rungs trains exactly as one
that does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sweeper.errors import SweepError
from sweeper.finetune.settings import FinetuneSettings

if TYPE_CHECKING:
    import torch

    Parts = tuple[list[torch.nn.Module], list[torch.nn.Module], list[torch.nn.Module]]

ADAPTER = "default"


def linear_names(root: torch.nn.Module, blocks: Sequence[torch.nn.Module]) -> list[str]:
    """Names (in `root`) of the linear layers inside `blocks`: what the adapters are put on."""
    import torch

    inside = {id(m) for b in blocks for m in b.modules()}
    return [n for n, m in root.named_modules() if id(m) in inside and isinstance(m, torch.nn.Linear)]


def adapt(root: torch.nn.Module, parts: Parts, s: FinetuneSettings) -> None:
    """Put rank-`ft_lora_rank` adapters on the linear layers of the blocks after the first K of `ft_freeze`
    (in place). They train, and so do the output head and, with `ft_freeze: none`, the input layers; every
    other weight is frozen (the blocks' own weights, the first K blocks, a Kronos tokenizer)."""
    inputs, blocks, head = parts
    k = s.frozen_blocks() or 0
    targets = linear_names(root, blocks[k:])
    if not targets:
        raise SweepError("ft_lora_rank: the trainable blocks have no linear layer to adapt")
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, lora_dropout=0.0, target_modules=targets)
    inject_adapter_in_model(config, root, adapter_name=ADAPTER)  # and freezes all but the adapters
    for m in [*(inputs if k == 0 else []), *head]:
        m.requires_grad_(True)


@contextlib.contextmanager
def merged(root: torch.nn.Module) -> Iterator[None]:
    """`root` as the backend knows it: every adapted layer is its base layer with the adapter's update
    added to the weight; on exit the adapters and the untouched base weights are back."""
    import torch
    from peft.tuners.lora import LoraLayer

    swaps = []
    with torch.no_grad():
        for name, layer in [(n, m) for n, m in root.named_modules() if isinstance(m, LoraLayer)]:
            parent_name, _, attr = name.rpartition(".")
            parent = root.get_submodule(parent_name)
            base = layer.get_base_layer()
            weight = base.weight.data
            base.weight.data = weight + layer.get_delta_weight(ADAPTER).to(weight.dtype)
            setattr(parent, attr, base)
            swaps.append((parent, attr, layer, base, weight))
    try:
        yield
    finally:
        for parent, attr, layer, base, weight in reversed(swaps):
            base.weight.data = weight
            setattr(parent, attr, layer)


def saving_merged(root: torch.nn.Module, save: Callable[[Path], None]) -> Callable[[Path], None]:
    """The backend's `save`, run on the merged view of `root`."""

    def write(folder: Path) -> None:
        with merged(root):
            save(folder)

    return write
