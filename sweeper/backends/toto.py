"""Toto (Datadog, toto-ts 0.2.0): a decoder-only transformer with a Student-T mixture head.

Toto forecasts a patch (16 or 64 bars) at a time: for the next patch it outputs an independent
distribution per bar and variate, and longer horizons are decoded autoregressively, patch by patch, each
draw feeding its own sampled patch back. So:

- horizon within one patch: one forward pass per origin, then all draws from that distribution. This is
  exactly the distribution the library's sampler draws from (it repeats the context once per draw and
  runs the same pass on each copy), at a fraction of the cost. The pass is batched over the origins; each
  origin's draws come from its own slice of the head's output, in seeded blocks per origin
  (`Backend.block_seeds`), so draws a..b are the same whichever call, and whichever batch, made them.
- longer horizons: `TotoForecaster.forecast`, once per origin and draw block under that block's seed (a
  batch of one: the library samples a whole batch from the global RNG), `samples_per_batch` paths per pass.
  That knob changes speed, not the draws' distribution, so the cache ignores it; it must divide the block,
  and the largest divisor not above the knob is used. Past one patch the library repeats the context for
  every path (each carries its own key/value cache), so the context's cost grows with
  the draws: what the draw blocks and the cache's draws-as-needed keep small.

With `use_covariates` the five OHLCV columns go in as one multivariate series (Toto attends across
variates) and the close is read out; otherwise the close alone. The model scales each variate itself
(causal patch mean/std), so raw prices go in and prices come out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.backends.base import Backend, Seeds
from sweeper.backends.pretrained import (
    CONFIG,
    WEIGHTS,
    checkpoint_dir,
    per_origin_samples,
    preset_config,
    quiet,
    write_checkpoint,
)
from sweeper.data import freq_seconds
from sweeper.device import seeded, torch_device
from sweeper.knob import Knob
from sweeper.plan import Contexts

CLOSE = 3  # column of the close in Contexts.values (open, high, low, close, volume)
# the per-origin tensors of a MaskedTimeseries (all but num_exogenous_variables)
FIELDS = ("series", "padding_mask", "id_mask", "timestamp_seconds", "time_interval_seconds")

_COMMON = {
    "dropout": 0.0,
    "scaler_cls": "<class 'model.scaler.CausalPatchStdMeanScaler'>",
    "output_distribution_classes": ["<class 'model.distribution.MixtureOfStudentTsOutput'>"],
    "spacewise_first": True,
    "use_memory_efficient_attention": False,
    "stabilize_with_global": True,
    "scale_factor_exponent": 10.0,
}
# Toto publishes one size, Toto-Open-Base-1.0 (151M parameters): `small` and `base` both write its shapes.
_BASE = {
    **_COMMON,
    "patch_size": 64,
    "stride": 64,
    "embed_dim": 768,
    "num_layers": 12,
    "num_heads": 12,
    "mlp_hidden_dim": 3072,
    "dropout": 0.1,
    "spacewise_every_n_layers": 12,
    "spacewise_first": False,
    "output_distribution_kwargs": {"k_components": 24},
}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **_COMMON,
        "patch_size": 16,
        "stride": 16,
        "embed_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "mlp_hidden_dim": 128,
        "spacewise_every_n_layers": 2,
        "output_distribution_kwargs": {"k_components": 4},
    },
    "small": _BASE,
    "base": _BASE,
}


def samples_per_batch(num_samples: int, wanted: int) -> int:
    """The largest divisor of `num_samples` that is at most `wanted` (Toto asserts divisibility)."""
    top = max(1, min(int(wanted), num_samples))
    return next(d for d in range(top, 0, -1) if num_samples % d == 0)


def _toto() -> Any:
    """The toto-ts modules (slow to import, and noisy about xFormers)."""
    with quiet():
        import toto.data.util.dataset
        import toto.inference.forecaster
        import toto.model.toto
    return toto


class TotoBackend(Backend):
    name = "toto"
    default_checkpoint = "Datadog/Toto-Open-Base-1.0"
    # origins per call (grown where it pays: sweeper.batching); past one patch each origin carries
    # samples_per_batch paths (and a KV cache)
    batch_size = 16
    batch_ceiling = 256
    knobs = (
        Knob("use_covariates", bool, False, doc="open, high, low, volume as more variates of one series"),
        # memory, not quality: paths decoded together past one patch (at most a draw block). The library
        # samples them from one random stream, so another value gives other draws: it is keyed, not searched
        Knob("samples_per_batch", int, 32, low=1, doc="paths decoded together past one patch"),
    )

    def __init__(self, checkpoint: str | None = None, device: str = "cpu") -> None:
        super().__init__(checkpoint, device)
        folder = checkpoint_dir(self.name, str(self.checkpoint))  # before the slow imports: fail fast
        lib = _toto()
        dataset = lib.data.util.dataset
        self._masked, self._pad, self._pad_ids = dataset.MaskedTimeseries, dataset.pad_array, dataset.pad_id_mask
        self._clean = dataset.replace_extreme_values
        self._device = torch_device(device)
        self.device = str(self._device)
        with quiet():  # from_pretrained prints where it loads from
            model = lib.model.toto.Toto.from_pretrained(str(folder), map_location=self.device, strict=True)
        model.eval()
        self._forecaster = lib.inference.forecaster.TotoForecaster(model.model)

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds, first: int = 0
    ) -> np.ndarray:
        import torch

        knobs = self.knob_values(knobs)
        columns = [0, 1, 2, CLOSE, 4] if knobs["use_covariates"] else [CLOSE]
        series = torch.as_tensor(
            np.ascontiguousarray(ctx.values[:, :, columns].transpose(0, 2, 1)), dtype=torch.float32, device=self._device
        )  # (B, V, C)
        b, v, c = series.shape
        stamps = torch.as_tensor(ctx.ts.astype("datetime64[s]").astype(np.int64), device=self._device)
        inputs = self._masked(
            series=series,
            padding_mask=torch.ones_like(series, dtype=torch.bool),
            id_mask=torch.zeros_like(series, dtype=torch.int),
            timestamp_seconds=stamps[:, None, :].expand(b, v, c),
            time_interval_seconds=torch.full((b, v), freq_seconds(ctx.freq), dtype=torch.int, device=self._device),
            num_exogenous_variables=0,
        )
        target = columns.index(CLOSE)
        seeds = self.block_seeds(seed, b, first, num_samples)
        with torch.inference_mode():
            if horizon <= self._forecaster.model.patch_embed.patch_size:
                paths = self._next_patch(inputs, target, horizon, seeds)
            else:
                spb = samples_per_batch(self.draw_block, knobs["samples_per_batch"])
                paths = torch.cat([self._decoded(inputs, i, target, horizon, spb, row) for i, row in enumerate(seeds)])
        return paths[:, :num_samples].float().cpu().numpy()

    def _decoded(self, inputs: Any, i: int, target: int, horizon: int, spb: int, seeds: list[int]) -> Any:
        """(1, N, H) draws of origin `i` past one patch: the library's `TotoForecaster.forecast` on that origin
        alone, one call per block under the block's seed. The library samples every path of a batch from the
        global RNG, so a batch of one per origin is the cheapest exact way to seed each origin on its own;
        its passes already carry `spb` paths (the context repeated per path), so little batching is lost."""
        import torch

        alone = self._masked(**{f: getattr(inputs, f)[i : i + 1] for f in FIELDS}, num_exogenous_variables=0)
        blocks = []
        for s in seeds:
            with seeded(s, self._device):
                out = self._forecaster.forecast(
                    alone, prediction_length=horizon, num_samples=self.draw_block, samples_per_batch=spb
                )
            blocks.append(out.samples[:, target].permute(0, 2, 1))  # (1, H, N) -> (1, N, H)
        return torch.cat(blocks, dim=1)

    def _next_patch(self, inputs: Any, target: int, horizon: int, seeds: list[list[int]]) -> Any:
        """(B, N, H) draws of the first `horizon` bars of the next patch of variate `target`, one block per seed.

        The same pass the library's first decoding step makes (padding, causal scaler, backbone, mixture
        head), batched over the origins, then every draw from it instead of one draw per repeated context:
        each origin's from its own slice of the head's output, under its own block seeds.
        """

        model = self._forecaster.model
        stride = model.patch_embed.stride
        series = self._pad(inputs.series, stride)
        hidden, loc, scale = model.backbone(
            series,
            self._pad(inputs.padding_mask, stride),
            self._pad_ids(inputs.id_mask, stride),
            None,
            series.shape[-1],
            0,
        )
        patch = model.patch_embed.patch_size
        last = slice(hidden.shape[2] - patch, hidden.shape[2] - patch + horizon)
        pick = slice(target, target + 1)

        def origin(i: int) -> Any:
            at = (slice(i, i + 1), pick, last)
            return self._forecaster.create_affine_transformed(model.output_distribution(hidden[at]), loc[at], scale[at])

        draws = self._clean(per_origin_samples(origin, seeds, self.draw_block, self._device)[:, :, 0])  # (N, B, H)
        return draws.permute(1, 0, 2)

    @classmethod
    def init_checkpoint(cls, preset: str, out: Path) -> Path:
        """config.json (the constructor arguments, as on the hub) + model.safetensors; Toto has no save_pretrained."""
        import json

        import torch
        from safetensors.torch import save_model

        config = preset_config(cls.name, PRESETS, preset)
        toto_cls = _toto().model.toto.Toto
        with seeded(0, torch.device("cpu")):
            model = toto_cls(**config)

        def save(folder: Path) -> None:
            (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            save_model(model, str(folder / WEIGHTS))

        return write_checkpoint(out, save)
