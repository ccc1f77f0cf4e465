"""Kronos sampling that computes the shared context once per origin and only the new tokens per draw.

The package's `auto_regressive_inference` repeats every context once per sampled path and, at every new
bar, runs the whole window again through the model, then runs the whole window of every path through the
tokenizer's decoder. Both stacks are causal (`is_causal=True`, rotary positions counted from the window's
start), and while the window grows (context + horizon within the package's `max_context`, 512, what
`KronosPredictor` uses) a position's keys and values never change once computed. So here:

- per origin, once: the tokenizer's encoding of the context, the model's pass over it (keys and values of
  every layer, the first bar's logits) and the decoder's pass over the context tokens;
- per draw and bar: one token through the model, attending to the cached context and its own earlier
  tokens; at the end, the H new tokens through the decoder, attending to the cached context.

The operations are the package's own modules (projections, norms, feed-forward, heads, rotary tables), in
the same order, and the random draws are the same calls on tensors of the same shapes, each origin's from its
own generator, so under an origin's block seed its paths equal the package's sampler run on that origin
alone under the same seed (tests/test_backend_kronos.py). Attention over cached keys is
written out (a joint softmax over the context's keys, shared by an origin's draws, and the draw's own).

The context pass is most of the cost at the published shapes (88% of a 6-trial Kronos-small sweep on CPU,
profiled) and depends only on the normalised, clipped context and its time features, so the backend keeps
it per origin across calls (`sweeper.passes`: `Prefix.split` and `Prefix.join` cut and rejoin batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from sweeper.passes import leaves

MAX_CONTEXT = 512  # the package's KronosPredictor window; past it the window slides and nothing is shared
KV = tuple[torch.Tensor, torch.Tensor]


def _heads(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """(B, T, d) -> (B, heads, T, head_dim)."""
    b, t, _ = x.shape
    return x.view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)


def _merge(attn: Any, o: torch.Tensor) -> torch.Tensor:
    b, _, t, _ = o.shape
    return attn.out_proj(o.transpose(1, 2).contiguous().view(b, t, attn.d_model))


def _rotate(attn: Any, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's rotary embedding at positions start .. start + T - 1 (its own cached tables)."""
    t = q.shape[-2]
    cos, sin = attn.rotary._update_cos_sin_cache(q, start + t)
    cos, sin = cos[:, :, start : start + t], sin[:, :, start : start + t]
    rot = attn.rotary._rotate_half
    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


def _joint(q: torch.Tensor, ctx: KV, own: KV | None) -> torch.Tensor:
    """Attention of each row's queries (R, h, T, e) over its origin's context keys (U, h, C, e), shared by
    the R / U draws of an origin (rows origin-major), and the row's own keys (R, h, P, e), causal among the
    last T of them."""
    ck, cv = ctx
    u, rows, t = ck.shape[0], q.shape[0], q.shape[2]
    draws, scale = rows // u, 1.0 / math.sqrt(q.shape[-1])
    grouped = q.reshape(u, draws, *q.shape[1:])
    scores = [torch.einsum("udhte,uhce->udhtc", grouped, ck).reshape(rows, *q.shape[1:3], -1) * scale]
    if own is not None:
        ok = own[0]
        p = ok.shape[2]
        s = (q @ ok.transpose(-1, -2)) * scale
        future = torch.arange(p, device=q.device)[None, :] > (p - t + torch.arange(t, device=q.device))[:, None]
        scores.append(s.masked_fill(future, float("-inf")))
    weights = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
    c = ck.shape[2]
    w_ctx = weights[..., :c].reshape(u, draws, *weights.shape[1:3], c)
    out = torch.einsum("udhtc,uhce->udhte", w_ctx, cv).reshape(q.shape)
    if own is not None:
        out = out + weights[..., c:] @ own[1]
    return out


def _block_context(layer: Any, x: torch.Tensor) -> tuple[torch.Tensor, KV]:
    """A TransformerBlock over whole windows (U, C, d), as the package runs it; also returns its keys/values."""
    attn = layer.self_attn
    h = layer.norm1(x)
    q, k, v = (_heads(attn, proj(h)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = attn.rotary(q, k)
    x = x + _merge(attn, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return x + layer.ffn(layer.norm2(x)), (k, v)


def _block_new(layer: Any, x: torch.Tensor, ctx: KV, own: KV | None, start: int) -> tuple[torch.Tensor, KV]:
    """The same block for new tokens (R, T, d) at positions start.., over cached context and own keys."""
    attn = layer.self_attn
    h = layer.norm1(x)
    q, k, v = (_heads(attn, proj(h)) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = _rotate(attn, q, k, start)
    if own is not None:
        k, v = torch.cat([own[0], k], dim=2), torch.cat([own[1], v], dim=2)
    x = x + _merge(attn, _joint(q, ctx, (k, v)))
    return x + layer.ffn(layer.norm2(x)), (k, v)


@dataclass
class Prefix:
    """What every draw of an origin shares: computed once per origin (U origins)."""

    pre: torch.Tensor  # (U, C) context tokens
    post: torch.Tensor
    stamps: torch.Tensor  # (U, C + H, 5) time features of the context and forecast bars
    model_kv: list[KV]  # per model layer, (U, heads, C, head_dim)
    cross_kv: KV  # the dependency layer's keys/values of the context's hidden states
    last: torch.Tensor  # (U, d) hidden state at the context's last position
    logits: torch.Tensor  # (U, V1) its s1 logits: the first bar's
    decoder_kv: list[KV]  # per tokenizer decoder layer, over the context tokens

    def map(self, f: Any) -> Prefix:
        """The prefix with `f` applied to each of its tensors (all have the origins first), in the order
        `sweeper.passes.leaves` lists them."""

        def each(x: Any) -> Any:
            return f(x) if isinstance(x, torch.Tensor) else type(x)(each(v) for v in x)

        return Prefix(**{field.name: each(getattr(self, field.name)) for field in fields(self)})

    def split(self) -> list[Prefix]:
        """One prefix per origin, each in storage of its own (held by `sweeper.passes`)."""
        return [self.map(lambda t, u=u: t[u : u + 1].clone()) for u in range(self.pre.shape[0])]

    @staticmethod
    def join(rows: list[Prefix], stamps: torch.Tensor) -> Prefix:
        """Origins' prefixes (one origin each) as one batch, with this call's time features (they run on
        into the forecast bars, which the prefix does not depend on). One origin is used as it is held."""
        if len(rows) == 1:
            return replace(rows[0], stamps=stamps)
        joined = iter([torch.cat(parts) for parts in zip(*(leaves(r) for r in rows), strict=True)])
        return replace(rows[0].map(lambda _: next(joined)), stamps=stamps)


def shared_prefix(tokenizer: Any, model: Any, z: torch.Tensor, stamps: torch.Tensor) -> Prefix:
    """Encode the normalised contexts (U, C, 6) and run them through the model and the decoder once."""
    c = z.shape[1]
    pre, post = tokenizer.encode(z, half=True)
    x = model.embedding([pre, post]) + model.time_emb(stamps[:, :c])
    model_kv = []
    for layer in model.transformer:
        x, kv = _block_context(layer, x)
        model_kv.append(kv)
    hidden = model.norm(x)
    cross = model.dep_layer.cross_attn
    cross_kv = (_heads(cross, cross.k_proj(hidden)), _heads(cross, cross.v_proj(hidden)))
    d = tokenizer.post_quant_embed(tokenizer.indices_to_bits([pre, post], half=True))
    decoder_kv = []
    for layer in tokenizer.decoder:
        d, kv = _block_context(layer, d)
        decoder_kv.append(kv)
    logits = model.head(hidden)[:, -1]
    return Prefix(pre, post, stamps, model_kv, cross_kv, hidden[:, -1], logits, decoder_kv)


def sample_from_logits(
    logits: torch.Tensor, gens: list[torch.Generator], temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """The package's `sample_from_logits` (temperature, its top-k/top-p filter, softmax, one multinomial
    draw per row), with each origin's rows (origin-major, equally many) drawn from that origin's generator:
    the filter and softmax run batched, the draws per origin, so an origin's tokens never depend on the
    other origins of the batch, and they equal the package's under `torch.manual_seed` of that generator's
    seed when it samples the origin alone."""
    from model.kronos import top_k_top_p_filtering

    logits = logits / temperature
    if top_k > 0 or top_p < 1.0:
        logits = top_k_top_p_filtering(logits, top_k=top_k, top_p=top_p)
    probs = F.softmax(logits, dim=-1)
    rows = probs.shape[0] // len(gens)
    return torch.cat([torch.multinomial(probs[u * rows : (u + 1) * rows], 1, generator=g) for u, g in enumerate(gens)])


def sample_block(
    tokenizer: Any,
    model: Any,
    p: Prefix,
    gens: list[torch.Generator],
    draws: int,
    horizon: int,
    temperature: float,
    top_k: int,
    top_p: float,
) -> torch.Tensor:
    """`draws` paths per origin (rows origin-major), decoded: (U * draws, horizon, 6), normalised; origin u's
    drawn from `gens[u]` alone.

    Step i, as the package: s1 from the last position's logits, s2 from the dependency layer given s1,
    both with the package's sampling (`sample_from_logits`); then the new bar goes in at position C + i."""

    c = p.pre.shape[1]
    if c + horizon > MAX_CONTEXT:
        raise ValueError(f"kronos: context_length + horizon = {c + horizon} exceeds the window of {MAX_CONTEXT} bars")

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(draws, dim=0)

    dep = model.dep_layer
    stamps, logits, last = rows(p.stamps), rows(p.logits), rows(p.last)
    own_model: list[KV | None] = [None] * len(model.transformer)
    own_cross: KV | None = None
    pre, post = [], []
    for i in range(horizon):
        if i:  # the bar drawn at step i - 1 enters at position C + i - 1
            x = model.embedding([pre[-1], post[-1]]) + model.time_emb(stamps[:, c + i - 1 : c + i])
            for j, layer in enumerate(model.transformer):
                x, own_model[j] = _block_new(layer, x, p.model_kv[j], own_model[j], c + i - 1)
            hidden = model.norm(x)
            logits, last = model.head(hidden)[:, -1], hidden[:, -1]
            k, v = (_heads(dep.cross_attn, proj(hidden)) for proj in (dep.cross_attn.k_proj, dep.cross_attn.v_proj))
            if own_cross is not None:
                k, v = torch.cat([own_cross[0], k], 2), torch.cat([own_cross[1], v], 2)
            own_cross = (k, v)
        s1 = sample_from_logits(logits, gens, temperature, top_k, top_p)
        # the dependency layer: s1's embedding attends to every hidden state (rotary at one position: identity)
        q = _heads(dep.cross_attn, dep.cross_attn.q_proj(model.embedding.emb_s1(s1)))
        attended = _merge(dep.cross_attn, _joint(q, p.cross_kv, own_cross))
        s2_logits = model.head.cond_forward(dep.norm(last[:, None] + attended))[:, -1]
        s2 = sample_from_logits(s2_logits, gens, temperature, top_k, top_p)
        pre.append(s1)
        post.append(s2)
    d = tokenizer.post_quant_embed(tokenizer.indices_to_bits([torch.cat(pre, 1), torch.cat(post, 1)], half=True))
    for j, layer in enumerate(tokenizer.decoder):
        d, _ = _block_new(layer, d, p.decoder_kv[j], None, c)
    return tokenizer.head(d)
