"""Moirai 2.0 (Salesforce, uni2ts 2.0.0): a decoder-only transformer that outputs quantiles, not samples.

For each origin and step the model gives 9 quantiles (levels 0.1 ... 0.9; horizons past its multi-token
window are decoded recursively by the library). The rest of sweep works on samples, so this backend turns
the quantiles into samples honestly, by sampling the quantile function they define:

- the quantiles are sorted first (monotone rearrangement: crossing quantiles become a valid function);
- between the outer levels the quantile function is piecewise linear through the 9 points;
- below 0.1 and above 0.9 it continues as exponential tails, Q(u) = q(0.1) + s * ln(u / 0.1) on the left
  (mirrored on the right), with s fixed so the tail passes through the neighbouring quantile. That is a
  Laplace-type tail, heavier than a Gaussian one: the model says nothing past its outer quantiles, and
  returns are fat-tailed, so the tails should not be cut at the 10th and 90th percentiles;
- draw u uniform on (0, 1) and return Q(u). One u per path, shared by all its steps: the model gives
  only marginals per step, and a price path's levels at neighbouring steps are close to perfectly
  rank-correlated, so a path stays at one quantile rank (each step's marginal is exact either way).

Aggregation knobs (mean, median, trimmed means, quantiles) then work on these samples like on any model's;
more samples only resolve the same quantile function more finely. Draws are made sample by sample, so the
first n of N draws are exactly the n-draw forecast. The model scales its input itself: raw closes go in,
prices come out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.backends.base import Backend, Seeds, origin_rngs
from sweeper.backends.pretrained import checkpoint_dir, preset_config, quiet, write_checkpoint
from sweeper.device import seeded, torch_device
from sweeper.plan import Contexts

_LAYOUT = {
    "patch_size": 16,
    "max_seq_len": 512,
    "attn_dropout_p": 0.0,
    "dropout_p": 0.0,
    "num_predict_token": 4,
    "quantile_levels": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
}
# small: the moirai-2.0-R-small shapes (11.4M parameters, as published).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 64, "d_ff": 128, "num_layers": 2, **_LAYOUT},
    "small": {"d_model": 384, "d_ff": 1024, "num_layers": 6, **_LAYOUT},
}


def sample_quantile_function(quantiles: np.ndarray, levels: np.ndarray, num_samples: int, seed: Seeds) -> np.ndarray:
    """(B, N, H) draws from the quantile function through `quantiles` (B, K, H) at `levels` (K,).

    Piecewise linear between the levels, exponential tails outside them (see the module docstring).
    """
    q = np.sort(np.asarray(quantiles, dtype=np.float64), axis=1)
    a = np.asarray(levels, dtype=np.float64)
    b = q.shape[0]
    u = np.stack([rng.random(num_samples) for rng in origin_rngs(seed, b)])  # the first n never depend on N
    u = np.clip(u, 1e-12, 1.0 - 1e-12)[:, :, None]  # (B, N, 1): one rank per path
    # interior: linear interpolation between the two levels around u
    j = np.clip(np.searchsorted(a, u, side="right") - 1, 0, a.size - 2)  # (B, N, 1)
    lo, hi = np.take_along_axis(q, j, axis=1), np.take_along_axis(q, j + 1, axis=1)  # (B, N, H)
    w = (u - a[j]) / (a[j + 1] - a[j])
    out = lo + w * (hi - lo)
    # tails: Q(u) = q_1 + s_left * ln(u / a_1) below a_1, Q(u) = q_K - s_right * ln((1 - u) / (1 - a_K)) above a_K
    s_left = (q[:, 1:2] - q[:, 0:1]) / np.log(a[1] / a[0])
    s_right = (q[:, -1:] - q[:, -2:-1]) / np.log((1 - a[-2]) / (1 - a[-1]))
    left = q[:, 0:1] + s_left * np.log(u / a[0])
    right = q[:, -1:] - s_right * np.log((1 - u) / (1 - a[-1]))
    out = np.where(u < a[0], left, out)
    return np.where(u > a[-1], right, out)


def _moirai2() -> Any:
    with quiet():
        import uni2ts.model.moirai2
    return uni2ts.model.moirai2


class Moirai2Backend(Backend):
    name = "moirai2"
    default_checkpoint = "Salesforce/moirai-2.0-R-small"
    batch_size = 64  # origins per forward pass (grown where it pays: sweeper.batching); sampling is numpy
    batch_ceiling = 1024

    def __init__(self, checkpoint: str | None = None, device: str = "cpu") -> None:
        super().__init__(checkpoint, device)
        folder = checkpoint_dir(self.name, str(self.checkpoint))  # before the slow imports: fail fast
        self._lib = _moirai2()
        self._device = torch_device(device)
        self.device = str(self._device)
        with quiet():  # from_pretrained prints where it loads from
            module = self._lib.Moirai2Module.from_pretrained(str(folder), map_location=self.device, strict=True)
        self._module = module.to(self._device).eval()
        self.levels = np.asarray(self._module.quantile_levels, dtype=np.float64)

    def quantiles(self, ctx: Contexts, horizon: int) -> np.ndarray:
        """The model's own output: (B, K, H) quantiles of the close at `self.levels`."""
        import torch

        b, c, _ = ctx.values.shape
        model = self._lib.Moirai2Forecast(
            module=self._module,
            prediction_length=horizon,
            context_length=c,
            target_dim=1,
            feat_dynamic_real_dim=0,
            past_feat_dynamic_real_dim=0,
        )
        target = torch.as_tensor(np.ascontiguousarray(ctx.close[:, :, None]), dtype=torch.float32, device=self._device)
        with torch.inference_mode():
            out = model(
                past_target=target,
                past_observed_target=torch.ones_like(target, dtype=torch.bool),
                past_is_pad=torch.zeros((b, c), dtype=torch.bool, device=self._device),
            )
        return out.reshape(b, self.levels.size, horizon).double().cpu().numpy()

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds, first: int = 0
    ) -> np.ndarray:
        q = self.quantiles(ctx, horizon)  # deterministic; the draws come from `seed` alone
        # each origin's draws are one stream (the first n never depend on N): later draws are a longer call's tail
        return sample_quantile_function(q, self.levels, first + num_samples, seed)[:, first:]

    @classmethod
    def init_checkpoint(cls, preset: str, out: Path) -> Path:
        """`Moirai2Module.save_pretrained`: config.json + model.safetensors, as on the hub."""
        import torch

        config = preset_config(cls.name, PRESETS, preset)
        module_cls = _moirai2().Moirai2Module
        with seeded(0, torch.device("cpu")):
            module = module_cls(**config)
        return write_checkpoint(out, module.save_pretrained)
