"""Moirai 1.x (Salesforce, uni2ts 2.0.0): a masked encoder with a mixture-distribution head.

One forward pass per batch of origins gives a distribution for the whole horizon; the draws are
independent samples from it. The module standardises each variate itself, so raw prices go in and prices
come out.

Knobs: `patch_size` (one of the checkpoint's patch sizes, or "auto": the library scores every patch size
on the last `horizon` bars of the context and forecasts with the best, so the model's own context is
`context_length - horizon` bars and nothing past the origin is used), and `use_covariates` (open, high,
low and volume as past-only dynamic covariates of the close).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.backends.base import Backend
from sweeper.backends.pretrained import checkpoint_dir, preset_config, quiet, seeded, torch_device, write_checkpoint
from sweeper.plan import Contexts

CLOSE = 3  # column of the close in Contexts.values (open, high, low, close, volume)
COVARIATES = [0, 1, 2, 4]
AUTO = "auto"

_LAYOUT = {"patch_sizes": (8, 16, 32, 64, 128), "max_seq_len": 512, "attn_dropout_p": 0.0, "dropout_p": 0.0}
# d_model must be a multiple of 64 (one attention head per 64). small/base/large: the moirai-1.1-R shapes.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 64, "num_layers": 2, **_LAYOUT},
    "small": {"d_model": 384, "num_layers": 6, **_LAYOUT},
    "base": {"d_model": 768, "num_layers": 12, **_LAYOUT},
    "large": {"d_model": 1024, "num_layers": 24, **_LAYOUT},
}


def _uni2ts() -> Any:
    with quiet():
        import uni2ts.distribution
        import uni2ts.model.moirai
    return uni2ts


class MoiraiBackend(Backend):
    name = "moirai"
    default_checkpoint = "Salesforce/moirai-1.1-R-small"
    batch_size = 32  # origins per forward pass; the draws are sampled from its output

    def __init__(self, checkpoint: str | None = None, device: str = "auto") -> None:
        super().__init__(checkpoint, device)
        folder = checkpoint_dir(self.name, str(self.checkpoint))  # before the slow imports: fail fast
        self._lib = _uni2ts().model.moirai
        self._device = torch_device(device)
        self.device = str(self._device)
        with quiet():  # from_pretrained prints where it loads from
            module = self._lib.MoiraiModule.from_pretrained(str(folder), map_location=self.device, strict=True)
        self._module = module.to(self._device).eval()

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: int
    ) -> np.ndarray:
        import torch

        patch = knobs.get("patch_size", AUTO)
        patch = AUTO if patch == AUTO else int(patch)
        if patch != AUTO and patch not in self._module.patch_sizes:
            raise ValueError(f"patch_size {patch} is not one of this checkpoint's {list(self._module.patch_sizes)}")
        covariates = bool(knobs.get("use_covariates", False))
        b, c, _ = ctx.values.shape
        model_context = c - horizon if patch == AUTO else c
        if model_context < 1:
            raise ValueError(f'patch_size "auto" needs context_length > horizon ({c} <= {horizon})')
        model = self._lib.MoiraiForecast(
            module=self._module,
            prediction_length=horizon,
            context_length=model_context,
            patch_size=patch,
            num_samples=num_samples,
            target_dim=1,
            feat_dynamic_real_dim=0,
            past_feat_dynamic_real_dim=len(COVARIATES) if covariates else 0,
        )

        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=self._device)

        target = tensor(ctx.close[:, :, None])
        inputs = {
            "past_target": target,
            "past_observed_target": torch.ones_like(target, dtype=torch.bool),
            "past_is_pad": torch.zeros((b, c), dtype=torch.bool, device=self._device),
        }
        if covariates:
            feats = tensor(ctx.values[:, :, COVARIATES])
            inputs["past_feat_dynamic_real"] = feats
            inputs["past_observed_feat_dynamic_real"] = torch.ones_like(feats, dtype=torch.bool)
        with seeded(seed, self._device), torch.inference_mode():
            draws = model(**inputs)  # (B, N, H)
        return draws.reshape(b, num_samples, horizon).float().cpu().numpy()

    @classmethod
    def init_checkpoint(cls, preset: str, out: Path) -> Path:
        """`MoiraiModule.save_pretrained`: config.json (distribution encoded as on the hub) + model.safetensors."""
        import torch

        config = preset_config(cls.name, PRESETS, preset)
        lib = _uni2ts()
        d = lib.distribution
        mixture = d.MixtureOutput(
            [d.StudentTOutput(), d.NormalFixedScaleOutput(scale=1e-3), d.NegativeBinomialOutput(), d.LogNormalOutput()]
        )
        with seeded(0, torch.device("cpu")):
            module = lib.model.moirai.MoiraiModule(distr_output=mixture, **config)
        return write_checkpoint(out, module.save_pretrained)
