"""Plumbing shared by the pretrained-model backends (Toto, Moirai, Moirai 2).

Where weights come from: a hub id is resolved to its folder in the Hugging Face cache (downloaded first
when online), so a hub id and a local copy load through the same `from_pretrained(folder)` call. Missing
weights become one `SweepError` line that says how to provide them; with HF_HUB_OFFLINE set that happens
at once, without the ~20 s of network retries. Also: per-origin draws that leave the global torch RNG
alone, and writing random checkpoints next to, never over, existing weights (the device: sweeper/device.py).

torch and huggingface_hub are imported inside the functions: importing `sweeper` stays cheap.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeper.device import reseed
from sweeper.errors import SweepError

if TYPE_CHECKING:
    import torch

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at its own import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _how_to_provide(backend: str) -> str:
    return (
        f"point at a local copy with --checkpoint {backend}=PATH or `checkpoint:` in search_spaces/{backend}.yaml, "
        f"or write a random one with `sweep models init {backend} --preset tiny --out DIR`"
    )


def checkpoint_dir(backend: str, checkpoint: str) -> Path:
    """The local folder with config.json and model.safetensors for a directory or a hub id."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        missing = [f for f in (CONFIG, WEIGHTS) if not (path / f).is_file()]
        if missing:
            raise SweepError(f"{backend} checkpoint {path} has no {' or '.join(missing)}; {_how_to_provide(backend)}")
        return path
    if path.exists():
        raise SweepError(f"{backend} checkpoint {path} is a file; give the directory holding {CONFIG} and {WEIGHTS}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    local_only = offline()
    try:
        weights = [hf_hub_download(checkpoint, name, local_files_only=local_only) for name in (CONFIG, WEIGHTS)][1]
    except HFValidationError:
        raise SweepError(
            f"{backend} checkpoint {checkpoint!r} is neither a directory nor a hub id (owner/name); "
            f"{_how_to_provide(backend)}"
        ) from None
    except (OSError, ValueError) as exc:
        why = "HF_HUB_OFFLINE is set" if local_only else f"the download failed ({type(exc).__name__})"
        raise SweepError(
            f"no {backend} weights for {checkpoint}: not a local directory, not in the Hugging Face cache, "
            f"and {why}; {_how_to_provide(backend)}"
        ) from None
    return Path(weights).parent


def per_origin_samples(
    distribution: Callable[[int], Any], seeds: list[list[int]], block: int, device: torch.device
) -> Any:
    """(N, B, ...) draws of B origins: origin i's `block`-draw blocks from its own distribution
    (`distribution(i)`, batch shape (1, ...)), each under one of its block seeds (`Backend.block_seeds`).
    The forward pass that made the distributions stays batched; only the sampling runs per origin, so an
    origin's draws depend on its own seeds alone. One `fork_rng` for all of it: the caller's RNG is kept."""
    import torch

    cuda = [device.index or 0] if device.type == "cuda" else []
    origins = []
    with torch.random.fork_rng(devices=cuda):
        for i, row in enumerate(seeds):
            distr = distribution(i)
            blocks = []
            for s in row:
                reseed(s, device)
                blocks.append(distr.sample((block,)))
            origins.append(torch.cat(blocks))
    return torch.cat(origins, dim=1)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what the model libraries print and warn while importing and loading (xFormers notices)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", ImportWarning)
        warnings.filterwarnings("ignore", message=".*xFormers.*")
        yield


def preset_config(backend: str, presets: Mapping[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The constructor arguments of a named preset (`sweep models init --preset`)."""
    if name not in presets:
        raise SweepError(f"unknown {backend} preset {name!r}: choose from {', '.join(presets)}")
    return dict(presets[name])


def write_checkpoint(out: Path, save: Callable[[Path], None]) -> Path:
    """Let `save` fill a temporary folder beside `out`, then move it into place.

    Never writes into a folder that already holds files: random weights must not replace real ones.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SweepError(f"{out} already exists and is not an empty directory: choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save(tmp)
        mask = _umask()
        for file in tmp.iterdir():  # safetensors writes 0600; give the files what open() would
            file.chmod(0o666 & ~mask)
        tmp.chmod(0o777 & ~mask)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
