"""The MarketGPT network: candle tokens in, next-candle logits and a few steps of returns out.

Input: four token embeddings (one table per OHLC component, d_model/4 wide each) concatenated and
projected to d_model, plus a sinusoidal position code and learned hour-of-day and day-of-week
embeddings of each bar's timestamp. Body: pre-norm causal transformer blocks (GELU, dropout), with a
key/value cache for fast sampling. Heads: next-token logits per component, tied to the input
embeddings as in GPT-2 (this is what brings the `base` preset to the seed's ~87M parameters), and a
multi-step head giving `n_steps` x 4 continuous returns in units of the tokenizer's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sweeper.errors import SweepError

KV = tuple[torch.Tensor, torch.Tensor]
RETURN_CLIP = 10.0  # continuous targets are clipped at this many scale units so one crash bar cannot dominate


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 1024
    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_ff: int = 3072
    context_length: int = 2048
    dropout: float = 0.1
    n_steps: int = 16

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "context_length", "n_steps"):
            if int(getattr(self, name)) < 1:
                raise SweepError(f"MarketGPT config: {name} must be a positive integer")
        if self.d_model % self.n_heads or self.d_model % 4:
            raise SweepError(f"MarketGPT config: d_model {self.d_model} must divide by n_heads and by 4")
        if not 0 <= self.dropout < 1:
            raise SweepError(f"MarketGPT config: dropout {self.dropout} must be in [0, 1)")


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation defaults of a preset; `train` arguments override them."""

    batch_size: int
    lr: float
    warmup_steps: int
    max_steps: int
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches of batch_size per optimiser step (effective batch = their product)
    alpha: float = 0.7  # loss = alpha * cross-entropy + (1 - alpha) * MSE of the multi-step head
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    train: TrainSettings


PRESETS: dict[str, Preset] = {
    # minutes on a 2-core CPU: no dropout (CPU dropout costs a third of a step; 1500 steps cannot overfit)
    "tiny": Preset(
        ModelConfig(n_layers=2, d_model=64, n_heads=4, d_ff=256, context_length=128, dropout=0.0),
        TrainSettings(batch_size=16, lr=1e-3, warmup_steps=100, max_steps=1500),
    ),
    # an hour or so on a laptop GPU
    "small": Preset(
        ModelConfig(n_layers=6, d_model=256, n_heads=8, d_ff=1024, context_length=512, dropout=0.1),
        TrainSettings(batch_size=32, lr=6e-4, warmup_steps=500, max_steps=20_000),
    ),
    # the seed's GPT-2-small scale (A100, fp16, 4-step accumulation)
    "base": Preset(
        ModelConfig(),
        TrainSettings(batch_size=8, lr=6e-4, warmup_steps=2000, max_steps=100_000, grad_accum=4),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SweepError(f"unknown MarketGPT preset {name!r}: choose from {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class Batch:
    """Training windows: T bars each; position t predicts bar t+1 (tokens) and bars t+1.. (returns)."""

    tokens: torch.Tensor  # (B, T, 4) int64
    hours: torch.Tensor  # (B, T) int64
    dows: torch.Tensor  # (B, T) int64
    rets: torch.Tensor  # (B, T, 4) float32, log returns / tokenizer scale
    mask: torch.Tensor  # (B, T) bool: bars that may serve as targets

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.tokens, self.hours, self.dows, self.rets, self.mask)))


@dataclass
class Losses:
    total: torch.Tensor
    ce: torch.Tensor
    mse: torch.Tensor


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(T,) positions -> (T, dim) the transformer's fixed sine/cosine code."""
    freqs = torch.exp(torch.arange(0, dim, 2, device=positions.device) * (-math.log(10_000.0) / dim))
    angles = positions.float()[:, None] * freqs[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]


class Block(nn.Module):
    """x + attn(norm(x)), then x + ffn(norm(x)): pre-norm keeps deep stacks stable."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.ff2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: PrefixCache | None = None) -> tuple[torch.Tensor, KV]:
        """Causal attention over x; with a cache, x is one new token per path attending to all before it."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))
        if cache is None:
            p = self.dropout if self.training else 0.0
            att = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            att = cache.attend(q, k, v)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        x = x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))
        return x, (k, v)


class PrefixCache:
    """One block's keys/values while sampling: a context's (shared by its `samples` paths, never copied)
    plus each path's own, written in place as tokens are generated."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, samples: int, capacity: int) -> None:
        b, h, _, dh = k.shape
        self.k, self.v, self.samples = k, v, samples
        self.own_k = k.new_empty(b, samples, h, capacity, dh)
        self.own_v = v.new_empty(b, samples, h, capacity, dh)
        self.length = 0

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (b * samples, heads, 1, dh) for one new token per path -> attention output, same shape."""
        b, h, n_ctx, dh = self.k.shape
        if q.shape[2] != 1:
            raise ValueError("a prefix cache takes one new token per path at a time")
        j = self.length
        self.own_k[:, :, :, j] = k.view(b, self.samples, h, dh)
        self.own_v[:, :, :, j] = v.view(b, self.samples, h, dh)
        self.length = j + 1
        own_k, own_v = self.own_k[:, :, :, : j + 1], self.own_v[:, :, :, : j + 1]
        qq = q.view(b, self.samples, h, dh)
        scores = torch.cat(
            [torch.einsum("bnhd,bhld->bnhl", qq, self.k), torch.einsum("bnhd,bnhjd->bnhj", qq, own_k)], dim=-1
        ).mul(dh**-0.5)
        p = scores.softmax(-1)
        out = torch.einsum("bnhl,bhld->bnhd", p[..., :n_ctx], self.v)
        out = out + torch.einsum("bnhj,bnhjd->bnhd", p[..., n_ctx:], own_v)
        return out.reshape(b * self.samples, h, 1, dh)


class MarketGPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, e = cfg.d_model, cfg.d_model // 4
        self.embed = nn.ModuleList(nn.Embedding(cfg.vocab_size, e) for _ in range(4))
        self.in_proj = nn.Linear(4 * e, d)
        self.hour = nn.Embedding(24, d)
        self.dow = nn.Embedding(7, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.token_proj = nn.Linear(d, 4 * e)
        self.token_bias = nn.Parameter(torch.zeros(4, cfg.vocab_size))
        self.step_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, cfg.n_steps * 4))
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2: shrink residual writes so the stream's variance stays put
            for lin in (blk.proj, blk.ff2):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        tokens: torch.Tensor,
        hours: torch.Tensor,
        dows: torch.Tensor,
        start: int = 0,
        cache: list[PrefixCache] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """(B, T, 4) tokens at positions start.. -> hidden states (B, T, d) and each block's new keys/values."""
        t = tokens.shape[1]
        if start + t > self.cfg.context_length:
            raise ValueError(f"positions up to {start + t} exceed the model's context {self.cfg.context_length}")
        x = self.in_proj(torch.cat([emb(tokens[..., j]) for j, emb in enumerate(self.embed)], dim=-1))
        pos = sinusoid(torch.arange(start, start + t, device=tokens.device), self.cfg.d_model)
        x = self.drop(x + pos + self.hour(hours) + self.dow(dows))
        kvs = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, None if cache is None else cache[i])
            kvs.append(kv)
        return self.norm(x), kvs

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., 4, V): each component scored against its own (tied) embedding table."""
        lead = h.shape[:-1]
        return self._component_logits(h.reshape(-1, h.shape[-1])).permute(1, 0, 2).reshape(*lead, 4, -1)

    def _component_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (4, N, V), component-major: one batched matmul with the bias fused, no copies."""
        q = self.token_proj(h).view(h.shape[0], 4, -1).transpose(0, 1)  # (4, N, e)
        table = torch.stack([emb.weight for emb in self.embed])  # (4, V, e)
        return torch.baddbmm(self.token_bias[:, None, :], q, table.transpose(1, 2))

    def steps(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., n_steps, 4) returns of the next bars, in tokenizer-scale units."""
        return self.step_head(h).unflatten(-1, (self.cfg.n_steps, 4))

    def loss(self, batch: Batch, alpha: float = 0.7, label_smoothing: float = 0.0) -> Losses:
        """alpha * CE(next tokens) + (1 - alpha) * MSE(multi-step returns), over unmasked targets only."""
        h, _ = self(batch.tokens[:, :-1], batch.hours[:, :-1], batch.dows[:, :-1])
        target_ok = batch.mask[:, 1:]
        logits = self._component_logits(h.reshape(-1, h.shape[-1])).float()  # (4, B*(T-1), V)
        targets = batch.tokens[:, 1:].reshape(-1, 4).T  # (4, B*(T-1))
        ce_all = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), reduction="none", label_smoothing=label_smoothing
        ).view(4, -1)
        ok = target_ok.reshape(1, -1)
        ce = (ce_all * ok).sum() / (4 * ok.sum()).clamp(min=1)
        s = self.cfg.n_steps
        rets = F.pad(batch.rets[:, 1:], (0, 0, 0, s - 1)).unfold(1, s, 1).transpose(2, 3)  # (B, T-1, S, 4)
        ok = F.pad(target_ok, (0, s - 1)).unfold(1, s, 1)  # (B, T-1, S)
        err = (self.steps(h).float() - rets.clamp(-RETURN_CLIP, RETURN_CLIP)) ** 2
        mse = (err * ok[..., None]).sum() / (4 * ok.sum()).clamp(min=1)
        return Losses(alpha * ce + (1 - alpha) * mse, ce.detach(), mse.detach())


def count_parameters(cfg: ModelConfig) -> int:
    """Parameters of a config, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return sum(p.numel() for p in MarketGPT(cfg).parameters())
