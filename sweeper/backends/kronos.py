"""Kronos (PyPI `kronos-model-arch`, module `model`): a tokenised OHLCV model sampled autoregressively.

Checkpoints. A hub id names the model; its tokenizer follows from it (`NeoQuasar/Kronos-mini` uses
`NeoQuasar/Kronos-Tokenizer-2k`, every other id `NeoQuasar/Kronos-Tokenizer-base`). A local directory
DIR holds both, each in the package's own `save_pretrained` format (config.json + model.safetensors):

    DIR/model/      config.json  model.safetensors    (e.g. huggingface-cli download NeoQuasar/Kronos-small
    DIR/tokenizer/  config.json  model.safetensors     --local-dir DIR/model; same for the tokenizer)

`sweep models init kronos --preset tiny --out DIR` writes that layout with random weights.

Inputs. Kronos reads six columns: open, high, low, close, volume and amount. The lake has no amount, so
it is volume x mean(open, high, low, close), the package's own rule when amount is missing (so a
forecast here equals what `KronosPredictor` would give for the same bars). Each window is z-scored per
column over its context and clipped to +-clip, as the package does. Time features (minute, hour,
weekday, day, month) come from the context's timestamps; the H target timestamps are the last context
timestamp plus 1..H bar lengths of the series frequency, never the real future bars.

Sampling. `KronosPredictor.predict` averages its paths; here every path is kept. The paths are the
package's `auto_regressive_inference` (window up to its predictor's 512 bars, `sample_count` paths per
origin), but the context is encoded and run through the model and the tokenizer's decoder once per origin,
and each draw then pays only for its own new tokens (`kronos_prefix`). The passes are batched over the
origins, the token draws are not: each origin's block of `draw_block` paths comes from its own generator,
seeded by that origin's block seed (`Backend.block_seeds`), and equals one call of the package's sampler
on that origin alone under that seed. So an origin's draws never depend on the rest of its batch.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweeper.backends.base import Backend, Seeds
from sweeper.backends.pretrained import checkpoint_dir
from sweeper.device import seeded, torch_device
from sweeper.errors import SweepError
from sweeper.knob import TEMPERATURE, TOP_K, TOP_P, Knob
from sweeper.plan import Contexts

if TYPE_CHECKING:
    from sweeper.backends.kronos_prefix import Prefix
    from sweeper.passes import ContextPasses

DEFAULT_MODEL = "NeoQuasar/Kronos-small"
DEFAULT_TOKENIZER = "NeoQuasar/Kronos-Tokenizer-base"
TOKENIZERS = {"NeoQuasar/Kronos-mini": "NeoQuasar/Kronos-Tokenizer-2k"}
WEIGHTS = ("config.json", "model.safetensors")
CLOSE = 3  # column of close in Kronos's open, high, low, close, volume, amount
_TOKENIZER_BASE: dict[str, Any] = {
    "d_in": 6, "d_model": 256, "n_heads": 4, "ff_dim": 512, "n_enc_layers": 4, "n_dec_layers": 4,
    "ffn_dropout_p": 0.0, "attn_dropout_p": 0.0, "resid_dropout_p": 0.0, "s1_bits": 10, "s2_bits": 10,
    "beta": 0.05, "gamma0": 1.0, "gamma": 1.1, "zeta": 0.05, "group_size": 4,
}  # fmt: skip
# Random-init shapes: (tokenizer config, model config). `small` is the published Kronos-small with
# Kronos-Tokenizer-base; `tiny` has 6 + 6 token bits (vocabularies of 64, not 1024): the package computes
# both output heads at every window position for every new bar, which would dominate a tiny model's cost.
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (
        {
            **_TOKENIZER_BASE, "d_model": 32, "n_heads": 2, "ff_dim": 64, "n_enc_layers": 2, "n_dec_layers": 2,
            "s1_bits": 6, "s2_bits": 6,
        },
        {
            "s1_bits": 6, "s2_bits": 6, "n_layers": 2, "d_model": 32, "n_heads": 2, "ff_dim": 64,
            "ffn_dropout_p": 0.0, "attn_dropout_p": 0.0, "resid_dropout_p": 0.0, "token_dropout_p": 0.0,
            "learn_te": True,
        },
    ),
    "small": (
        _TOKENIZER_BASE,
        {
            "s1_bits": 10, "s2_bits": 10, "n_layers": 8, "d_model": 512, "n_heads": 8, "ff_dim": 1024,
            "ffn_dropout_p": 0.25, "attn_dropout_p": 0.1, "resid_dropout_p": 0.25, "token_dropout_p": 0.1,
            "learn_te": True,
        },
    ),
}  # fmt: skip
# Parameter counts of the published checkpoints (Kronos-small, Kronos-Tokenizer-base).
PUBLISHED_PARAMS = {"small": (3_958_042, 24_741_376)}


def _kronos_package() -> Any:
    """Import `model` from kronos-model-arch, refusing a look-alike earlier on sys.path."""
    try:
        import model as pkg
    except ImportError as exc:
        raise SweepError(
            "kronos backend needs kronos-model-arch: pip install --no-deps kronos-model-arch==0.1.0"
        ) from exc
    if not all(hasattr(pkg, n) for n in ("Kronos", "KronosTokenizer")):
        raise SweepError(
            f"kronos: `import model` found {getattr(pkg, '__file__', pkg)}, not kronos-model-arch; "
            "a model/ folder or model.py earlier on sys.path hides the package"
        )
    return pkg


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load(cls: Any, ref: str, device: str) -> Any:
    """`from_pretrained` with strict key checking, in eval mode (it returns training mode), on `device`."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loading weights from local directory"
            module = cls.from_pretrained(ref, local_files_only=True, map_location="cpu", strict=True)
    except (RuntimeError, TypeError) as exc:
        raise SweepError(f"kronos checkpoint {ref}: weights do not match its config.json ({_first_line(exc)})") from exc
    return module.to(device).eval()


def _time_features(ts: np.ndarray) -> np.ndarray:
    """(..., 5) minute, hour, weekday, day, month: the package's calc_time_stamps, for any array shape."""
    import pandas as pd

    idx = pd.DatetimeIndex(ts.ravel())
    cols = (idx.minute, idx.hour, idx.weekday, idx.day, idx.month)
    return np.stack([np.asarray(c) for c in cols], axis=-1).reshape(*ts.shape, 5).astype(np.float32)


def _features(values: np.ndarray) -> np.ndarray:
    """(B, C, 6) open, high, low, close, volume, amount; amount = volume x mean of the four prices."""
    amount = values[:, :, 4] * values[:, :, :4].mean(axis=2)
    return np.concatenate([values, amount[:, :, None]], axis=2)


class KronosBackend(Backend):
    """Kronos tokenizer + model, loaded once; every sample path of the close (see the module docstring)."""

    name = "kronos"
    default_checkpoint = DEFAULT_MODEL
    # origins per call, their contexts run together once (kronos_prefix), grown where timing shows it pays
    # (sweeper.batching; 2 CPU cores, small preset, 32 draws, context 256: flat, 96-124 ms/origin, 1 to 32)
    batch_size = 32
    batch_ceiling = 256
    draw_block = 8  # every draw costs a token per bar through model and decoder: extend in small blocks
    # context passes kept for reuse (sweeper.passes): about 11 MB per origin at context 256 for the small
    # model (8 layers of keys/values at d_model 512, 4 decoder layers at 256), so ~180 origins
    pass_budget = 2 * 2**30
    knobs = (  # defaults: the package's predict() defaults
        TEMPERATURE,
        replace(TOP_P, default=0.9, doc="nucleus sampling; off when top_k > 0 (the package's sampler)"),
        TOP_K,
        Knob("clip", float, 5.0, low=0, low_open=True, doc="normalised features are clipped to +-clip"),
    )

    def __init__(self, checkpoint: str | None = None, device: str = "cpu") -> None:
        super().__init__(checkpoint, device)
        pkg = _kronos_package()
        self.device = torch_device(device)
        model_ref, tokenizer_ref = self._refs(str(self.checkpoint))
        self.tokenizer = _load(pkg.KronosTokenizer, tokenizer_ref, self.device)
        self.model = _load(pkg.Kronos, model_ref, self.device)
        from sweeper.passes import ContextPasses

        self.passes: ContextPasses[Prefix] = ContextPasses(self.pass_budget)

    @staticmethod
    def _refs(checkpoint: str) -> tuple[str, str]:
        """(model, tokenizer) references for from_pretrained: two subdirectories, or two hub ids."""
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            missing = [
                f"{sub}/{f}" for sub in ("model", "tokenizer") for f in WEIGHTS if not (path / sub / f).is_file()
            ]
            if missing:
                raise SweepError(
                    f"kronos checkpoint {path} must hold model/ and tokenizer/, each with config.json and "
                    f"model.safetensors; missing {', '.join(missing)}"
                )
            return str(path / "model"), str(path / "tokenizer")
        tokenizer = TOKENIZERS.get(checkpoint, DEFAULT_TOKENIZER)
        return str(checkpoint_dir("kronos", checkpoint)), str(checkpoint_dir("kronos", tokenizer))

    @classmethod
    def model_knobs(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """top_k > 0 turns top_p off in the package's sampler, so top_p then stays out of the cache key."""
        knobs = super().model_knobs(params)
        if int(knobs.get("top_k", cls.defaults()["top_k"])) > 0:
            knobs.pop("top_p", None)
        return knobs

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds, first: int = 0
    ) -> np.ndarray:
        import torch

        from sweeper.backends.kronos_prefix import Prefix, sample_block, shared_prefix
        from sweeper.passes import input_key

        k = self.knob_values(knobs)
        temperature, top_k, top_p, clip = k["temperature"], k["top_k"], k["top_p"], k["clip"]
        b = ctx.values.shape[0]
        x = _features(ctx.values.astype(np.float64))
        mean, std = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True) + 1e-5
        z_np = np.clip((x - mean) / std, -clip, clip).astype(np.float32)
        past = _time_features(ctx.ts)
        stamps = np.concatenate([past, _time_features(ctx.future_ts(horizon))], axis=1)
        keys = [input_key(z_np[u], past[u]) for u in range(b)]
        z = torch.from_numpy(z_np).to(self.device)
        seeds = self.block_seeds(seed, b, first, num_samples)
        d, blocks = self.draw_block, len(seeds[0])
        close = np.empty((b, blocks * d, horizon), dtype=np.float64)
        with torch.inference_mode():
            st = torch.from_numpy(stamps).to(self.device)

            def run(idx: list[int]) -> list[Prefix]:
                return shared_prefix(self.tokenizer, self.model, z[idx], st[idx]).split()

            prefix = Prefix.join(self.passes.rows(keys, run), st)
            for j in range(blocks):
                gens = [torch.Generator(device=self.device).manual_seed(row[j]) for row in seeds]
                paths = sample_block(self.tokenizer, self.model, prefix, gens, d, horizon, temperature, top_k, top_p)
                close[:, j * d : (j + 1) * d] = paths[:, :, CLOSE].reshape(b, d, horizon).double().cpu().numpy()
        return close[:, :num_samples] * std[:, :, CLOSE, None] + mean[:, :, CLOSE, None]

    @classmethod
    def init_checkpoint(cls, preset: str, out: Path) -> Path:
        """Random tokenizer + model written by the package's save_pretrained: OUT/model, OUT/tokenizer."""
        tokenizer, model = build_preset(preset)
        out = Path(out)
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "tokenizer")
        return out


def build_preset(preset: str, seed: int = 0) -> tuple[Any, Any]:
    """Randomly initialised (tokenizer, model) of a preset, in memory; seeded so checkpoints are reproducible."""
    if preset not in PRESETS:
        raise SweepError(f"unknown kronos preset {preset!r}: choose from {', '.join(PRESETS)}")
    pkg = _kronos_package()
    tokenizer_cfg, model_cfg = PRESETS[preset]
    with seeded(seed, torch_device("cpu")):
        return pkg.KronosTokenizer(**tokenizer_cfg), pkg.Kronos(**model_cfg)
