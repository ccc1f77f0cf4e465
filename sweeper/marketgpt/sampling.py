"""Close-price paths from MarketGPT: sampled token paths, or the multi-step head's direct forecast.

`sample` mode runs each context once, draws `num_samples` next candles from the last position's logits
(temperature, then top-k, then top-p per component), and continues every path with a key/value cache,
so a path costs one token per step. Origins are processed in chunks sized to bound the tokens of one
forward pass and the memory of the per-path caches. `direct` mode is a point forecast (the head's mean
returns), repeated for every sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sweeper.errors import SweepError
from sweeper.marketgpt.model import MarketGPT, PrefixCache
from sweeper.marketgpt.tokenizer import CandleTokenizer, candle_returns, time_features
from sweeper.passes import ContextPasses, input_key
from sweeper.plan import Contexts

PATH_BYTES = 256 * 2**20  # memory for the paths in flight (their caches, scores and logits)
TOKENS_PER_PASS = 65_536  # context tokens per forward pass (origins per chunk = this / context length)


@dataclass(frozen=True)
class SamplingSettings:
    """The backend's sampling knobs, checked against their declarations (`MarketGPTBackend.knobs`)."""

    mode: str
    temperature: float
    top_k: int  # 0: off
    top_p: float  # 1: off


@dataclass(frozen=True)
class Encoded:
    """Contexts as model inputs, plus the time features of the bars to forecast."""

    tokens: np.ndarray  # (B, L, 4)
    hours: np.ndarray  # (B, L)
    dows: np.ndarray  # (B, L)
    last_close: np.ndarray  # (B,)
    future_hours: np.ndarray  # (B, H)
    future_dows: np.ndarray  # (B, H)


def encode_contexts(tokenizer: CandleTokenizer, ctx: Contexts, horizon: int, keep: int) -> Encoded:
    """Tokenise the last `keep` bars of each context (a context of C bars gives C-1 tokens).

    Future bars' timestamps (`Contexts.future_ts`) only feed the hour/day-of-week features.
    """
    if ctx.values.shape[1] < 2:
        raise SweepError("marketgpt needs a context of at least 2 bars (one return)")
    tokens = tokenizer.encode(candle_returns(ctx.values))[:, -keep:]
    hours, dows = time_features(ctx.ts[:, 1:][:, -keep:])
    fh, fd = time_features(ctx.future_ts(horizon))
    return Encoded(tokens, hours, dows, ctx.close[:, -1].astype(np.float64), fh, fd)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then keep the top_k most likely tokens, then the smallest set holding top_p of the mass."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # mass before a token already exceeds top_p: the first one stays
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return logits


def _cdf(logits: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """(M, 4, V) logits -> their filtered CDFs, what `_draw` samples from."""
    return filter_logits(logits.float(), s.temperature, s.top_k, s.top_p).softmax(-1).cumsum(-1)


def _draw(cdf: torch.Tensor, gens: list[torch.Generator], samples: int = 1) -> torch.Tensor:
    """(M, 4, V) CDFs (`_cdf`) -> (M * samples, 4) tokens: `samples` independent draws per row, per component.

    Inverse-CDF sampling: one uniform per draw (torch.multinomial spends one random number per token),
    and the draws of one row share its CDF instead of copying the logits `samples` times. The rows are
    origin-major, equally many per origin, and origin u's uniforms come from `gens[u]` alone: the filter
    and CDF run batched, the draws per origin.
    """
    rows = cdf.shape[0] // len(gens)
    u = torch.cat([torch.rand((rows, cdf.shape[1], samples), generator=g, device=cdf.device) for g in gens])
    u = u * cdf[..., -1:]
    tokens = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)  # (M, 4, samples)
    return tokens.transpose(1, 2).reshape(-1, 4)


def _tensors(enc: Encoded, lo: int, hi: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a[lo:hi]).to(device) for a in (enc.tokens, enc.hours, enc.dows))


Pass = tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]  # one origin's first logits, keys/values


def _context_pass(
    model: MarketGPT, enc: Encoded, lo: int, hi: int, dev: torch.device, passes: ContextPasses[Pass]
) -> Pass:
    """Origins lo..hi's last-position logits (B, 4, V) and per-layer keys/values over their contexts: those
    `passes` holds, the others run together."""

    def run(idx: list[int]) -> list[Pass]:
        h0, kvs = model(*(t[idx] for t in _tensors(enc, lo, hi, dev)))
        logits = model.logits(h0[:, -1])
        return [
            (logits[u : u + 1].clone(), [(k[u : u + 1].clone(), v[u : u + 1].clone()) for k, v in kvs])
            for u in range(len(idx))
        ]

    keys = [input_key(enc.tokens[u], enc.hours[u], enc.dows[u]) for u in range(lo, hi)]
    rows = passes.rows(keys, run)
    layers = zip(*(kv for _, kv in rows), strict=True)
    return torch.cat([r[0] for r in rows]), [
        (torch.cat([k for k, _ in ls]), torch.cat([v for _, v in ls])) for ls in layers
    ]


@torch.no_grad()
def sample_paths(
    model: MarketGPT,
    tokenizer: CandleTokenizer,
    enc: Encoded,
    horizon: int,
    num_samples: int,
    settings: SamplingSettings,
    seeds: list[list[int]],
    block: int,
    passes: ContextPasses[Pass],
) -> np.ndarray:
    """(B, num_samples, horizon) close paths by ancestral sampling of candle tokens; `seeds[i]`: origin i's
    block seeds.

    Each chunk of origins runs its contexts once, batched (those `passes` does not hold yet); every block
    then continues from that prefix, each origin's paths drawn from a generator of its own seeded by its
    block seed, so an origin's draws never depend on the other origins of its chunk or on how many blocks
    one call makes."""
    dev = next(model.parameters()).device
    b, length = enc.tokens.shape[:2]
    cfg = model.cfg
    # floats held per path: its own keys/values, attention scores, and (past the first step) its logits
    per_path = 2 * cfg.n_layers * horizon * cfg.d_model + 3 * cfg.n_heads * (length + horizon)
    per_path += 12 * cfg.vocab_size if horizon > 1 else 0
    chunk = max(1, min(TOKENS_PER_PASS // length, PATH_BYTES // (4 * per_path * block)))
    close_tokens = np.empty((b, len(seeds[0]) * block, horizon), dtype=np.int64)
    for lo in range(0, b, chunk):
        hi = min(lo + chunk, b)
        logits0, kvs = _context_pass(model, enc, lo, hi, dev, passes)
        cdf0 = _cdf(logits0, settings)  # the first bar's, shared by every block (its sort is most of a draw)
        if horizon > 1:
            fh = torch.from_numpy(enc.future_hours[lo:hi]).to(dev).repeat_interleave(block, 0)
            fd = torch.from_numpy(enc.future_dows[lo:hi]).to(dev).repeat_interleave(block, 0)
        for j in range(len(seeds[0])):
            gens = [torch.Generator(device=dev).manual_seed(row[j]) for row in seeds[lo:hi]]
            tok = _draw(cdf0, gens, block)
            steps = [tok[:, 3]]
            if horizon > 1:
                cache = [PrefixCache(k, v, block, horizon - 1) for k, v in kvs]
            for i in range(horizon - 1):  # feed future bar i, draw bar i + 1
                h, _ = model(tok[:, None], fh[:, i : i + 1], fd[:, i : i + 1], start=length + i, cache=cache)
                tok = _draw(_cdf(model.logits(h[:, -1]), settings), gens)
                steps.append(tok[:, 3])
            paths = torch.stack(steps, dim=1).view(hi - lo, block, horizon).cpu().numpy()
            close_tokens[lo:hi, j * block : (j + 1) * block] = paths
    log_paths = np.cumsum(tokenizer.centres[3][close_tokens[:, :num_samples]], axis=2)
    return enc.last_close[:, None, None] * np.exp(log_paths)


@torch.no_grad()
def direct_paths(model: MarketGPT, tokenizer: CandleTokenizer, enc: Encoded, horizon: int) -> np.ndarray:
    """(B, horizon) closes from the multi-step head; beyond its n_steps, its forecast is tokenised,
    appended to the context, and the head is asked again."""
    dev = next(model.parameters()).device
    scale = torch.from_numpy(tokenizer.scale).to(dev, torch.float32)
    cap, b = model.cfg.context_length, enc.tokens.shape[0]
    log_rets = np.empty((b, horizon))
    chunk = max(1, TOKENS_PER_PASS // (enc.tokens.shape[1] + horizon))
    for lo in range(0, b, chunk):
        hi = min(lo + chunk, b)
        tokens, hours, dows = _tensors(enc, lo, hi, dev)
        done = 0
        while done < horizon:
            h, _ = model(tokens[:, -cap:], hours[:, -cap:], dows[:, -cap:])
            take = min(model.cfg.n_steps, horizon - done)
            rets = (model.steps(h[:, -1]) * scale)[:, :take].double().cpu().numpy()  # (b, take, 4) log returns
            log_rets[lo:hi, done : done + take] = rets[..., 3]
            later = (enc.future_hours[lo:hi, done : done + take], enc.future_dows[lo:hi, done : done + take])
            tokens = torch.cat([tokens, torch.from_numpy(tokenizer.encode(rets)).to(dev)], dim=1)
            hours = torch.cat([hours, torch.from_numpy(later[0]).to(dev)], dim=1)
            dows = torch.cat([dows, torch.from_numpy(later[1]).to(dev)], dim=1)
            done += take
    return enc.last_close[:, None] * np.exp(np.cumsum(log_rets, axis=1))


def close_paths(
    model: MarketGPT,
    tokenizer: CandleTokenizer,
    ctx: Contexts,
    horizon: int,
    num_samples: int,
    settings: SamplingSettings,
    seeds: list[list[int]],
    block: int,
    passes: ContextPasses[Pass],
) -> np.ndarray:
    """(B, num_samples, horizon) close paths for a batch of contexts, in the settings' mode; `seeds`: per
    origin, one per draw block of `block` draws (`Backend.block_seeds`); `passes`: the context passes kept."""
    cap = model.cfg.context_length
    if settings.mode == "direct":
        enc = encode_contexts(tokenizer, ctx, horizon, cap)
        point = direct_paths(model, tokenizer, enc, horizon)
        return np.repeat(point[:, None, :], num_samples, axis=1)
    if horizon > cap - 1:
        raise SweepError(f"marketgpt: horizon {horizon} needs a model context above {horizon}, this one has {cap}")
    enc = encode_contexts(tokenizer, ctx, horizon, cap - (horizon - 1))  # every sampled bar stays in context
    return sample_paths(model, tokenizer, enc, horizon, num_samples, settings, seeds, block, passes)
