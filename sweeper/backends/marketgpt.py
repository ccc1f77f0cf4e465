"""MarketGPT as a sweep backend: the project's own candle model, tuned like the foundation models.

Knobs (search_spaces/marketgpt.yaml): `mode` sample (token paths; `temperature`, `top_k`, `top_p`) or
direct (the multi-step head's point path, repeated for every sample). Fine-tuning is the shared `ft_`
knobs (sweeper.finetune.marketgpt): the weights it writes are just another checkpoint to this backend.

Two guards: the checkpoint's bar frequency must match the contexts', and no context may end before the
last bar the weights were trained on (that origin's target would have been in the training data).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sweeper.backends.base import Backend, Seeds
from sweeper.errors import SweepError
from sweeper.knob import TEMPERATURE, TOP_K, TOP_P, Knob
from sweeper.plan import Contexts

if TYPE_CHECKING:
    from sweeper.marketgpt.sampling import Pass
    from sweeper.passes import ContextPasses

INIT_FREQ = "1h"  # a random-init checkpoint fits its bins on the lake's bars at this frequency


class MarketGPTBackend(Backend):
    name = "marketgpt"
    batch_size = 1_000_000  # one call per split
    draw_block = 16  # sampled paths cost a token per step each: extend in small blocks
    pass_budget = 2 * 2**30  # context passes kept for reuse (sweeper.passes): keys/values per origin and layer
    knobs = (
        Knob("mode", str, "sample", choices=("sample", "direct"), doc="token paths, or the step head's point path"),
        TEMPERATURE,  # top-k and top-p per OHLC component
        TOP_K,
        TOP_P,
    )

    def __init__(self, checkpoint: str | None = None, device: str = "cpu") -> None:
        super().__init__(checkpoint, device)
        if self.checkpoint is None:
            raise SweepError(
                "marketgpt needs a trained checkpoint: run `sweep train marketgpt --symbols ... --freq ...` "
                "and pass `--checkpoint marketgpt=models/marketgpt/<name>` (or set checkpoint in "
                "search_spaces/marketgpt.yaml)"
            )
        from sweeper.marketgpt.checkpoint import from_pretrained
        from sweeper.passes import ContextPasses

        self.pretrained = from_pretrained(Path(self.checkpoint), device)
        self.passes: ContextPasses[Pass] = ContextPasses(self.pass_budget)
        meta = self.pretrained.meta
        self.trained_until = None if meta.trained_until is None else np.datetime64(meta.trained_until, "us")

    def _check(self, ctx: Contexts) -> None:
        meta = self.pretrained.meta
        if ctx.freq != meta.freq:
            raise SweepError(
                f"marketgpt checkpoint {self.checkpoint} was trained on {meta.freq} bars, asked for {ctx.freq}: "
                f"train one for {ctx.freq} with `sweep train marketgpt --freq {ctx.freq}`"
            )
        if self.trained_until is not None and ctx.ts.size and ctx.ts[:, -1].min() < self.trained_until:
            raise SweepError(
                f"marketgpt checkpoint {self.checkpoint} was trained on bars up to {meta.trained_until}, but an "
                f"origin right after {ctx.ts[:, -1].min()} is to be forecast: its target may have been "
                "training data. Train with the sweep's protocol (e.g. --horizon) or evaluate later origins"
            )

    def forecast(
        self, ctx: Contexts, horizon: int, num_samples: int, knobs: Mapping[str, Any], seed: Seeds, first: int = 0
    ) -> np.ndarray:
        from sweeper.marketgpt.sampling import SamplingSettings, close_paths

        self._check(ctx)
        k = self.knob_values(knobs)
        sampling = SamplingSettings(k["mode"], k["temperature"], k["top_k"], k["top_p"])
        model, tokenizer = self.pretrained.model, self.pretrained.tokenizer
        seeds = self.block_seeds(seed, ctx.values.shape[0], first, num_samples)
        return close_paths(model, tokenizer, ctx, horizon, num_samples, sampling, seeds, self.draw_block, self.passes)

    @classmethod
    def init_checkpoint(cls, preset: str, out: Path) -> Path:
        """Random weights, but real bins: k-means on the `INIT_FREQ` series of the lake ($SWEEP_LAKE or the
        demo lake), on bars before their default sweep validation origins (the same cut as training); a
        series that starts too late to have a context's bars before that cut is left out."""
        from sweeper.data import available, load, resolve_lake
        from sweeper.marketgpt.corpus import covered
        from sweeper.marketgpt.model import get_preset
        from sweeper.marketgpt.train import train
        from sweeper.plan import Protocol

        lake = resolve_lake(None)
        symbols = sorted({r.symbol for r in available(lake) if r.freq == INIT_FREQ})
        min_bars = get_preset(preset).model.context_length + 1
        series = covered(load(lake, symbols, INIT_FREQ), Protocol(), min_bars) if symbols else []
        if not series:
            raise SweepError(f"lake {lake} has no {INIT_FREQ} series long enough to fit MarketGPT's bins on")
        train([s.symbol for s in series], INIT_FREQ, lake, preset, out, max_steps=0, progress=False)
        return Path(out)
