"""MarketGPT fine-tuning: the project's own model on the shared driver, with the loss it was trained with.

A window of bars becomes what pre-training feeds the model (`sweeper.marketgpt.train.Windows`): candle
log returns against the previous close, the checkpoint's tokens of them, hour and day of the week, and
the returns in the tokenizer's scale; every bar after the first is a target, as in pre-training. The loss
is the model's own (`MarketGPT.loss`: alpha x next-token cross-entropy + (1 - alpha) x the multi-step
head's MSE, alpha as the checkpoint was trained) and the optimizer pre-training's (`make_optimizer`:
AdamW 0.9/0.95, decay on matrices only). The tokenizer's bins are never refitted. The weights are saved
as a MarketGPT checkpoint whose `trained_until` is the last bar fine-tuning saw, so the backend's guard
refuses an origin whose target was training data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.errors import SweepError
from sweeper.finetune.base import Finetuner
from sweeper.finetune.settings import FinetuneSettings


class MarketGPTFinetuner(Finetuner):
    backend = "marketgpt"

    def __init__(self, checkpoint: str, device: Any) -> None:
        from sweeper.marketgpt.checkpoint import from_pretrained

        super().__init__(checkpoint, device)
        self.pretrained = from_pretrained(Path(checkpoint), "cpu")
        self.model = self.pretrained.model
        self.alpha = float(self.pretrained.meta.settings.get("alpha", 0.7))
        self.seen_until: np.datetime64 | None = None  # the last bar of any window trained on

    def parts(self) -> tuple[list[Any], list[Any], list[Any]]:
        m = self.model
        return [*m.embed, m.in_proj, m.hour, m.dow], list(m.blocks), [m.norm, m.token_proj, m.step_head]

    def check(self, s: FinetuneSettings) -> None:
        super().check(s)
        returns = s.context + self.prediction(s) - 1
        if returns > self.model.cfg.context_length:
            raise SweepError(
                f"ft_context {s.context} + ft_prediction {self.prediction(s)}: windows of {returns} candle returns "
                f"exceed marketgpt checkpoint {self.checkpoint}'s context of {self.model.cfg.context_length}"
            )

    def module(self, s: FinetuneSettings) -> Any:
        return _module_class()(self.model, self.alpha, s.lr, s.weight_decay)

    def collate(
        self, windows: list[tuple[np.ndarray, np.ndarray]], s: FinetuneSettings, knobs: Mapping[str, Any]
    ) -> Any:
        import torch

        from sweeper.marketgpt.tokenizer import candle_returns, time_features

        tok = self.pretrained.tokenizer
        rets = candle_returns(np.stack([v for v, _ in windows]))  # (B, T, 4)
        ts = np.stack([t for _, t in windows])[:, 1:]
        hours, dows = time_features(ts)
        last = ts.max()
        self.seen_until = last if self.seen_until is None else max(self.seen_until, last)
        return (
            torch.from_numpy(tok.encode(rets)),
            torch.from_numpy(hours),
            torch.from_numpy(dows),
            torch.from_numpy((rets / tok.scale).astype(np.float32)),
            torch.ones(rets.shape[:2], dtype=torch.bool),
        )

    def save(self, folder: Path) -> None:
        from sweeper.marketgpt.checkpoint import save_pretrained

        meta = self.pretrained.meta
        until = meta.trained_until
        if self.seen_until is not None:
            seen = np.datetime64(self.seen_until, "us")
            until = str(seen if until is None else max(seen, np.datetime64(until, "us")))
        save_pretrained(folder, self.model, self.pretrained.tokenizer, replace(meta, trained_until=until))


def _module_class() -> type:
    import lightning as L

    from sweeper.marketgpt.model import Batch
    from sweeper.marketgpt.train import make_optimizer

    class MarketGPTFinetune(L.LightningModule):
        """MarketGPT's own combined loss on windows of candles, pre-training's optimizer."""

        def __init__(self, model: Any, alpha: float, lr: float, weight_decay: float) -> None:
            super().__init__()
            self.model, self.alpha, self.lr, self.weight_decay = model, alpha, lr, weight_decay

        def training_step(self, batch: tuple[Any, ...], batch_idx: int) -> Any:
            loss = self.model.loss(Batch(*batch), self.alpha).total
            self.log("train_loss", loss, prog_bar=True, on_step=True, batch_size=batch[0].shape[0])
            return loss

        def configure_optimizers(self) -> Any:
            return make_optimizer(self.model, self.lr, self.weight_decay)

    return MarketGPTFinetune
