"""Moirai 1.x (Salesforce, uni2ts 2.0.0): a masked encoder with a mixture-distribution head.

One forward pass per batch of origins gives the distribution of the forecast bars; the draws are
independent samples of it. `MoiraiForecast.forward` builds the distribution of every token (context
included, each padded to the largest patch), samples all of it and keeps the forecast tokens: on a CPU
that is almost all of its cost (36 s for 32 origins x 256 draws at patch 8). Here the same inputs go
through the same module, and the distribution head runs on the forecast tokens only: the same
distribution, hundreds of times cheaper to sample. The pass is batched over the origins; each origin's
draws come from its own slice of the distribution, in seeded blocks per origin (`Backend.block_seeds`), so
draws a..b are the same whichever call, and whichever batch, made them.
The module standardises each variate itself, so raw prices go in and prices come out.

Knobs: `patch_size`, one of the checkpoint's patch sizes or "auto". Auto does what the library's auto
does: every patch size forecasts the last `horizon` bars of the context from the bars before them, and
each origin is forecast with the patch size whose distribution gave those bars the highest likelihood;
the model's own context is then `context_length - horizon` bars, so nothing at or past the origin is used.
`use_covariates` adds open, high, low and volume as past-only dynamic covariates of the close.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweeper.backends.base import Backend, Seeds
from sweeper.backends.pretrained import (
    checkpoint_dir,
    per_origin_samples,
    preset_config,
    quiet,
    write_checkpoint,
)
from sweeper.device import seeded, torch_device
from sweeper.knob import Knob
from sweeper.plan import Contexts

if TYPE_CHECKING:
    from sweeper.passes import ContextPasses

CLOSE = 3  # column of the close in Contexts.values (open, high, low, close, volume)
COVARIATES = [0, 1, 2, 4]
AUTO = "auto"

_LAYOUT = {"patch_sizes": (8, 16, 32, 64, 128), "max_seq_len": 512, "attn_dropout_p": 0.0, "dropout_p": 0.0}
# d_model must be a multiple of 64 (one attention head per 64). small, base: the moirai-1.1-R shapes.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 64, "num_layers": 2, **_LAYOUT},
    "small": {"d_model": 384, "num_layers": 6, **_LAYOUT},
    "base": {"d_model": 768, "num_layers": 12, **_LAYOUT},
}


def _uni2ts() -> Any:
    with quiet():
        import uni2ts.distribution
        import uni2ts.model.moirai
    return uni2ts


@dataclass
class Head:
    """What one origin's forward pass leaves for its draws: the patch size it forecasts with (auto's pick)
    and the distribution head's parameters, loc and scale on its forecast tokens (batch of one)."""

    patch: int
    params: Any
    loc: Any
    scale: Any


class MoiraiBackend(Backend):
    name = "moirai"
    default_checkpoint = "Salesforce/moirai-1.1-R-small"
    batch_size = 32  # origins per forward pass (grown where it pays: sweeper.batching); draws sample its output
    batch_ceiling = 512
    pass_budget = 2**30  # forward passes kept for reuse (sweeper.passes): more draws of an origin only sample
    knobs = (
        Knob("patch_size", int, AUTO, choices=(8, 16, 32, 64, 128, AUTO), doc="the published patch sizes, or auto"),
        Knob("use_covariates", bool, False, doc="open, high, low, volume as past covariates"),
    )

    def __init__(self, checkpoint: str | None = None, device: str = "cpu") -> None:
        super().__init__(checkpoint, device)
        folder = checkpoint_dir(self.name, str(self.checkpoint))  # before the slow imports: fail fast
        self._lib = _uni2ts().model.moirai
        self._device = torch_device(device)
        self.device = str(self._device)
        with quiet():  # from_pretrained prints where it loads from
            module = self._lib.MoiraiModule.from_pretrained(str(folder), map_location=self.device, strict=True)
        self._module = module.to(self._device).eval()
        from sweeper.passes import ContextPasses

        self.passes: ContextPasses[Head] = ContextPasses(self.pass_budget)

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds, first: int = 0
    ) -> np.ndarray:
        import torch
        from torch.utils._pytree import tree_map

        from sweeper.passes import input_key

        knobs = self.knob_values(knobs)
        patch = knobs["patch_size"]
        if patch != AUTO and patch not in self._module.patch_sizes:
            raise ValueError(f"patch_size {patch} is not one of this checkpoint's {list(self._module.patch_sizes)}")
        b, c, _ = ctx.values.shape
        context = c - horizon if patch == AUTO else c
        if context < 1:
            raise ValueError(f'patch_size "auto" needs context_length > horizon ({c} <= {horizon})')
        close = torch.as_tensor(np.ascontiguousarray(ctx.close), dtype=torch.float32, device=self._device)
        covariates = None
        if knobs["use_covariates"]:
            covariates = torch.as_tensor(
                np.ascontiguousarray(ctx.values[:, :, COVARIATES]), dtype=torch.float32, device=self._device
            )
        out = np.empty((b, num_samples, horizon), dtype=np.float32)
        seeds = self.block_seeds(seed, b, first, num_samples)
        inputs = ctx.values[:, :, COVARIATES] if knobs["use_covariates"] else np.empty((b, 0))
        asked = np.array([horizon, -1 if patch == AUTO else patch])
        keys = [input_key(ctx.close[u], inputs[u], asked) for u in range(b)]

        def run(idx: list[int]) -> list[Head]:
            """The head of each origin in `idx`: the patch its forecast uses (auto's pick) and its parameters."""
            if patch == AUTO:
                cov = None if covariates is None else covariates[idx]
                chosen = self._best_patches(close[idx], cov, context, horizon)
            else:
                chosen = np.full(len(idx), patch)
            heads: list[Head] = [None] * len(idx)  # type: ignore[list-item]
            last = slice(c - context, c)
            for p in sorted(set(chosen.tolist())):
                rows = np.flatnonzero(chosen == p)
                picked = [idx[r] for r in rows]
                params, loc, scale = self._forecast_params(
                    p, close[picked, last], None if covariates is None else covariates[picked, last], horizon
                )
                for j, r in enumerate(rows):
                    own = tree_map(lambda x, j=j: x[j : j + 1].clone(), (params, loc, scale))
                    heads[r] = Head(p, *own)
            return heads

        with torch.inference_mode():
            heads = self.passes.rows(keys, run)
            for p in sorted({h.patch for h in heads}):
                rows = np.flatnonzero([h.patch == p for h in heads])

                def origin(i: int, rows: np.ndarray = rows) -> Any:
                    h = heads[rows[i]]
                    return self._module.distr_output.distribution(h.params, loc=h.loc, scale=h.scale)

                row_seeds = [seeds[r] for r in rows]
                draws = per_origin_samples(origin, row_seeds, self.draw_block, self._device)[:num_samples]
                # (N, B, tokens, patch)
                paths = draws.reshape(num_samples, rows.size, -1)[..., :horizon]
                out[rows] = paths.permute(1, 0, 2).float().cpu().numpy()
        return out

    def _best_patches(self, close: Any, covariates: Any, context: int, horizon: int) -> np.ndarray:
        """Per origin, the patch size whose forecast of the context's last `horizon` bars is most likely."""
        import torch

        past = slice(0, context)
        held_out = close[:, context:]
        cov = None if covariates is None else covariates[:, past]
        nll = []
        for p in self._module.patch_sizes:
            distr = self._forecast_distribution(p, close[:, past], cov, horizon)
            tokens = distr.batch_shape[1]
            values = torch.zeros((close.shape[0], tokens * p), dtype=close.dtype, device=close.device)
            values[:, :horizon] = held_out
            log_p = distr.log_prob(values.reshape(-1, tokens, p)).reshape(close.shape[0], -1)[:, :horizon]
            nll.append(-log_p.sum(dim=1))
        best = torch.stack(nll).argmin(dim=0).cpu().numpy()
        return np.asarray(self._module.patch_sizes)[best]

    def _forecast_distribution(self, patch: int, close: Any, covariates: Any, horizon: int) -> Any:
        """The module's distribution for the forecast bars only: batch shape (B, tokens, patch)."""
        params, loc, scale = self._forecast_params(patch, close, covariates, horizon)
        return self._module.distr_output.distribution(params, loc=loc, scale=scale)

    def _forecast_params(self, patch: int, close: Any, covariates: Any, horizon: int) -> tuple[Any, Any, Any]:
        """The distribution head's parameters, loc and scale for the forecast tokens, each (B, tokens, patch, ...).

        `MoiraiForecast` packs the inputs exactly as in pre-training; then `MoiraiModule.forward`, step by
        step, except that the distribution head runs on the forecast tokens only: it projects every token
        once per patch size, and on every token it costs as much as the rest of a tiny model.
        """
        import torch
        from torch.utils._pytree import tree_map
        from uni2ts.common.torch_util import mask_fill, packed_attention_mask

        b, context = close.shape
        model = self._lib.MoiraiForecast(
            module=self._module,
            prediction_length=horizon,
            context_length=context,
            patch_size=patch,
            target_dim=1,
            feat_dynamic_real_dim=0,
            past_feat_dynamic_real_dim=0 if covariates is None else covariates.shape[-1],
        )
        past = close[:, :, None]
        observed_covariates = None if covariates is None else torch.ones_like(covariates, dtype=torch.bool)
        target, observed, sample_id, time_id, variate_id, prediction_mask = model._convert(
            patch,
            past,
            torch.ones_like(past, dtype=torch.bool),
            torch.zeros((b, context), dtype=torch.bool, device=close.device),
            past_feat_dynamic_real=covariates,
            past_observed_feat_dynamic_real=observed_covariates,
        )
        m = self._module
        patch_sizes = torch.full_like(time_id, patch)
        loc, scale = m.scaler(target, observed * ~prediction_mask.unsqueeze(-1), sample_id, variate_id)
        reprs = mask_fill(m.in_proj((target - loc) / scale, patch_sizes), prediction_mask, m.mask_encoding.weight)
        reprs = m.encoder(reprs, packed_attention_mask(sample_id), time_id=time_id, var_id=variate_id)
        start = model.context_token_length(patch)
        tokens = slice(start, start + model.prediction_token_length(patch))
        params = m.param_proj(reprs[:, tokens], patch_sizes[:, tokens])
        cut = (slice(None), slice(None), slice(0, patch))  # each token is padded to the largest patch
        return tree_map(lambda x: x[cut], params), loc[:, tokens][cut], scale[:, tokens][cut]

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
