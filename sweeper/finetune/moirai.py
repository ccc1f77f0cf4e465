"""Moirai 1.x fine-tuning through uni2ts's own `MoiraiFinetune` (its packed NLL loss and AdamW groups).

Each window (close only, `ft_context` bars then `ft_prediction` bars) is packed by the library's
`MoiraiForecast._convert`, the same packing the backend forecasts with, with the real future bars in the
prediction tokens; `MoiraiFinetune.training_step` then scores them with its loss. The patch size is the
trial's `patch_size` knob; with `auto` each batch takes the checkpoint's patch sizes in turn (pre-training
varied it too). uni2ts 2.0.0 has no fine-tuning module for Moirai 2 (`moirai2` has forecast and module
only), so moirai2 is not fine-tunable here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.backends.moirai import AUTO, CLOSE, _uni2ts
from sweeper.backends.pretrained import checkpoint_dir, quiet
from sweeper.errors import SweepError
from sweeper.finetune.base import Finetuner
from sweeper.finetune.settings import FinetuneSettings


class MoiraiFinetuner(Finetuner):
    backend = "moirai"

    def __init__(self, checkpoint: str, device: Any) -> None:
        super().__init__(checkpoint, device)
        self._lib = _uni2ts().model.moirai
        with quiet():
            import uni2ts.model.moirai.finetune as finetune

            self._finetune = finetune
            self.module_ = self._lib.MoiraiModule.from_pretrained(
                str(checkpoint_dir(self.backend, checkpoint)), map_location="cpu", strict=True
            )
        self._batches = 0

    def parts(self) -> tuple[list[Any], list[Any], list[Any]]:
        m = self.module_
        return [m.in_proj, m.mask_encoding], list(m.encoder.layers), [m.param_proj]

    @classmethod
    def train_knobs(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"patch_size": params.get("patch_size", AUTO)}

    def _patch(self, knobs: Mapping[str, Any]) -> int:
        patch = knobs.get("patch_size", AUTO)
        sizes = list(self.module_.patch_sizes)
        if patch == AUTO:
            self._batches += 1
            return sizes[(self._batches - 1) % len(sizes)]
        if int(patch) not in sizes:
            raise SweepError(f"patch_size {patch} is not one of this moirai checkpoint's {sizes}")
        return int(patch)

    def check(self, s: FinetuneSettings) -> None:
        super().check(s)
        tokens = -(-s.context // min(self.module_.patch_sizes)) + -(
            -self.prediction(s) // min(self.module_.patch_sizes)
        )
        if tokens > self.module_.max_seq_len:
            raise SweepError(
                f"ft_context {s.context} + ft_prediction {self.prediction(s)} make {tokens} tokens at the smallest "
                f"patch, more than this moirai checkpoint's max_seq_len {self.module_.max_seq_len}"
            )

    def module(self, s: FinetuneSettings) -> Any:
        return self._finetune.MoiraiFinetune(
            min_patches=2,
            min_mask_ratio=0.1,
            max_mask_ratio=0.5,
            max_dim=1,
            num_training_steps=s.steps,
            num_warmup_steps=int(s.warmup * s.steps),
            module=self.module_,
            lr=s.lr,
            weight_decay=s.weight_decay,
            log_on_step=True,
            context_length=s.context,
            prediction_length=self.prediction(s),
        )

    def collate(
        self, windows: list[tuple[np.ndarray, np.ndarray]], s: FinetuneSettings, knobs: Mapping[str, Any]
    ) -> Any:
        import torch

        pred = self.prediction(s)
        patch = self._patch(knobs)
        close = torch.from_numpy(np.stack([v[:, CLOSE] for v, _ in windows]).astype(np.float32))[:, :, None]
        past, future = close[:, : s.context], close[:, s.context :]
        b = close.shape[0]
        packer = self._lib.MoiraiForecast(
            module=self.module_,
            prediction_length=pred,
            context_length=s.context,
            patch_size=patch,
            target_dim=1,
            feat_dynamic_real_dim=0,
            past_feat_dynamic_real_dim=0,
        )
        target, observed, sample_id, time_id, variate_id, prediction_mask = packer._convert(
            patch,
            past,
            torch.ones_like(past, dtype=torch.bool),
            torch.zeros((b, s.context), dtype=torch.bool),
            future,
            torch.ones_like(future, dtype=torch.bool),
            torch.zeros((b, pred), dtype=torch.bool),
        )
        return {
            "target": target,
            "observed_mask": observed,
            "sample_id": sample_id,
            "time_id": time_id,
            "variate_id": variate_id,
            "prediction_mask": prediction_mask,
            "patch_size": torch.full_like(time_id, patch),
        }

    def save(self, folder: Path) -> None:
        self.module_.save_pretrained(folder)
