"""Kronos fine-tuning: the predictor learns the frozen tokenizer's tokens, next-token cross-entropy.

kronos-model-arch ships the modules but no training loop, so this is the paper's objective with the
package's own parts: each window is normalised as the backend normalises a context (z-scores over its first
`ft_context` bars, amount = volume x mean price, clipped to +-clip), the frozen tokenizer encodes it into
(s1, s2) token pairs, `Kronos.forward` runs with teacher forcing on the tokens before each target, and
`head.compute_loss` (the mean of the s1 and s2 cross-entropies) is taken over the last `ft_prediction`
tokens. The tokenizer is saved unchanged beside the trained predictor (the backend's DIR/model +
DIR/tokenizer layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.backends.kronos import KronosBackend, _features, _kronos_package, _load, _time_features
from sweeper.finetune.base import Finetuner
from sweeper.finetune.settings import FinetuneSettings


class KronosFinetuner(Finetuner):
    backend = "kronos"

    def __init__(self, checkpoint: str, device: Any) -> None:
        import torch

        super().__init__(checkpoint, device)
        pkg = _kronos_package()
        model_ref, tokenizer_ref = KronosBackend._refs(checkpoint)
        cpu = torch.device("cpu")
        self.tokenizer = _load(pkg.KronosTokenizer, tokenizer_ref, cpu).requires_grad_(False)
        self.model = _load(pkg.Kronos, model_ref, cpu)

    def parts(self) -> tuple[list[Any], list[Any], list[Any]]:
        m = self.model
        return [m.embedding, m.time_emb], list(m.transformer), [m.norm, m.dep_layer, m.head]

    @classmethod
    def train_knobs(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"clip": float(params.get("clip", KronosBackend.defaults()["clip"]))}

    def module(self, s: FinetuneSettings) -> Any:
        return _module_class()(self.model, self.tokenizer, s.lr, s.weight_decay, self.prediction(s))

    def collate(
        self, windows: list[tuple[np.ndarray, np.ndarray]], s: FinetuneSettings, knobs: Mapping[str, Any]
    ) -> Any:
        import torch

        clip = self.train_knobs(knobs)["clip"]
        x = _features(np.stack([v for v, _ in windows]).astype(np.float64))
        past = x[:, : s.context]
        mean, std = past.mean(axis=1, keepdims=True), past.std(axis=1, keepdims=True) + 1e-5
        z = np.clip((x - mean) / std, -clip, clip).astype(np.float32)
        stamps = _time_features(np.stack([t for _, t in windows]))
        return torch.from_numpy(z), torch.from_numpy(stamps)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder / "model")
        self.tokenizer.save_pretrained(folder / "tokenizer")


def _module_class() -> type:
    import lightning as L
    import torch

    class KronosFinetune(L.LightningModule):
        """Next-token cross-entropy of the predictor on the frozen tokenizer's tokens."""

        def __init__(self, model: Any, tokenizer: Any, lr: float, weight_decay: float, prediction: int) -> None:
            super().__init__()
            self.model, self.tokenizer = model, tokenizer
            self.lr, self.weight_decay, self.prediction = lr, weight_decay, prediction

        def training_step(self, batch: tuple[Any, Any], batch_idx: int) -> Any:
            x, stamps = batch
            self.tokenizer.eval()
            with torch.no_grad():
                s1, s2 = self.tokenizer.encode(x, half=True)
            s1_logits, s2_logits = self.model(
                s1[:, :-1], s2[:, :-1], stamps[:, :-1], use_teacher_forcing=True, s1_targets=s1[:, 1:]
            )
            p = self.prediction
            loss, _, _ = self.model.head.compute_loss(s1_logits[:, -p:], s2_logits[:, -p:], s1[:, -p:], s2[:, -p:])
            self.log("train_loss", loss, prog_bar=True, on_step=True, batch_size=x.shape[0])
            return loss

        def configure_optimizers(self) -> Any:
            params = [p for p in self.model.parameters() if p.requires_grad]
            return torch.optim.AdamW(params, lr=self.lr, betas=(0.9, 0.95), weight_decay=self.weight_decay)

    return KronosFinetune
