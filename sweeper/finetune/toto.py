"""Toto fine-tuning through toto-ts's own `TotoForFinetuning` (its CombinedLoss and AdamW groups).

Batches are the library's `CausalMaskedTimeseries`, laid out as its `instance_to_causal` lays them out
(that helper, `collate_causal` and the `FinetuneDataModule` import Hugging Face `datasets`, which this
project does not install): the close series of `ft_context` bars followed by one patch, input the first
`ft_context` bars, target the same span one patch later (next-patch prediction, as Toto was pre-trained),
all bars valid, one id group. So the window's prediction part is
always one patch: `ft_prediction`, when given, must equal the checkpoint's patch size, and `ft_context`
must be a multiple of it. Training reads the close only (as the backend does without use_covariates).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.backends.pretrained import CONFIG, WEIGHTS, checkpoint_dir, quiet
from sweeper.backends.toto import CLOSE
from sweeper.errors import SweepError
from sweeper.finetune.base import Finetuner
from sweeper.finetune.settings import FinetuneSettings


class TotoFinetuner(Finetuner):
    backend = "toto"

    def __init__(self, checkpoint: str, device: Any) -> None:
        super().__init__(checkpoint, device)
        with quiet():
            import toto.data.util.dataset as dataset
            import toto.model.lightning_module as lightning_module
            import toto.model.toto as toto_model
        self._causal, self._lightning = dataset.CausalMaskedTimeseries, lightning_module
        self.folder = checkpoint_dir(self.backend, checkpoint)
        with quiet():
            self.model = toto_model.Toto.from_pretrained(str(self.folder), map_location="cpu", strict=True)
        self.patch = int(self.model.model.patch_embed.patch_size)

    def parts(self) -> tuple[list[Any], list[Any], list[Any]]:
        b = self.model.model
        return [b.patch_embed], list(b.transformer.layers), [b.unembed, b.output_distribution]

    @classmethod
    def window_prediction(cls, checkpoint: str, s: FinetuneSettings) -> int:
        """One patch, read from the checkpoint's config.json."""
        return int(json.loads((checkpoint_dir(cls.backend, checkpoint) / CONFIG).read_text())["patch_size"])

    def check(self, s: FinetuneSettings) -> None:
        super().check(s)
        if s.prediction is not None and s.prediction != self.patch:
            raise SweepError(
                f"ft_prediction {s.prediction}: Toto trains on the next patch, {self.patch} bars for this checkpoint"
            )
        if s.context % self.patch:
            raise SweepError(f"ft_context {s.context} must be a multiple of Toto's patch size {self.patch}")

    def module(self, s: FinetuneSettings) -> Any:
        warm = int(s.warmup * s.steps)
        return self._lightning.TotoForFinetuning(
            pretrained_backbone=self.model.model,
            lr=s.lr,
            min_lr=s.lr * 0.1,
            weight_decay=s.weight_decay,
            warmup_steps=warm,
            stable_steps=max(s.steps - warm, 0),
            decay_steps=1,
            val_prediction_len=self.patch,
        )

    def collate(
        self, windows: list[tuple[np.ndarray, np.ndarray]], s: FinetuneSettings, knobs: Mapping[str, Any]
    ) -> Any:
        import torch

        series = torch.from_numpy(np.stack([v[:, CLOSE] for v, _ in windows]).astype(np.float32))[:, None, :]
        b, _, t = series.shape
        return self._causal(
            series=series,
            padding_mask=torch.ones_like(series, dtype=torch.bool),
            id_mask=torch.zeros_like(series, dtype=torch.long),
            timestamp_seconds=torch.arange(t, dtype=torch.long).expand(b, 1, t),
            time_interval_seconds=torch.ones((b, 1), dtype=torch.long),
            input_slice=slice(0, s.context),
            target_slice=slice(self.patch, s.context + self.patch),
        )

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_model

        shutil.copyfile(self.folder / CONFIG, folder / CONFIG)
        save_model(self.model, str(folder / WEIGHTS))
