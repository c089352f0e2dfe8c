"""Reusable blocks: rotary time embedding, attention with padding masks, transformer blocks.

Attention weights can be captured for analysis with `capture_attention()`; when nothing
captures, attention runs through `F.scaled_dot_product_attention` and stores nothing.
A `KVCache` per attention module lets a decoder take one new token per step (generation).
"""
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_captured = None  # dict name -> list of (B, H, Nq, Nk) weights while capturing
_keep_graph = False


@contextmanager
def capture_attention(keep_graph=False):
    """Collect every attention module's weights (softmax) by module name; with `keep_graph`
    they stay in the autograd graph (for gradient-weighted attention)."""
    global _captured, _keep_graph
    previous, _captured = (_captured, _keep_graph), {}
    _keep_graph = keep_graph
    try:
        yield _captured
    finally:
        _captured, _keep_graph = previous


class RotaryTime(nn.Module):
    """Rotates half of each head's dimensions by angles t * 2π / period, with periods spread
    log-uniformly over [t_min, t_max] seconds, so q·k depends only on time differences."""

    def __init__(self, head_dim, t_min=1e-4, t_max=2.0):
        super().__init__()
        n, self.head_dim = head_dim // 4, head_dim
        periods = torch.logspace(math.log10(t_min), math.log10(t_max), n, dtype=torch.float64)
        self.register_buffer("omega", (2 * math.pi / periods).float(), persistent=False)

    def angles(self, t):
        """cos and sin (B, 1, N, head_dim / 4) of times t (B, N), computed once for all layers of a stack."""
        angle = t.float()[:, None, :, None] * self.omega
        return angle.cos(), angle.sin()

    def matrix(self, t):
        """The rotation of times t (B,) as matrices (B, D, D) acting on a head's vectors from the
        right (x @ matrix is `forward` of a single time): one product per use instead of eight
        elementwise operations, for generation's one token per row."""
        n, D = self.omega.numel(), self.head_dim
        cos, sin = (a[:, 0, 0] for a in self.angles(t[:, None]))                     # (B, n)
        m = torch.eye(D, dtype=cos.dtype, device=t.device).repeat(len(t), 1, 1)
        i = torch.arange(n, device=t.device)
        m[:, i, i], m[:, n + i, n + i], m[:, n + i, i], m[:, i, n + i] = cos, cos, -sin, sin
        return m

    def forward(self, x, t):
        """x (B, H, N, D); t (B, N) seconds, or their `angles`."""
        n = self.omega.numel()
        cos, sin = t if isinstance(t, tuple) else self.angles(t)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        a, b, rest = x.split([n, n, x.shape[-1] - 2 * n], -1)   # split, not slices: its backward is one cat
        return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


class KVCache:
    """Rotated keys and values kept between decoding steps (inference only: keys are written in
    place). `grow=True` (self-attention): each step's keys go into buffers that double when full; otherwise
    (cross-attention to a fixed memory) the first keys, values and attention mask are reused."""

    def __init__(self, grow):
        self.grow, self.n = grow, 0
        self.k = self.v = self.key_mask = self.attn_mask = self.attn_bias = None

    @property
    def fixed(self):
        return self.k is not None and not self.grow

    def select(self, rows):
        """Keep the batch rows `rows` (rows that finished leave a generating batch)."""
        for name in ("k", "v", "key_mask", "attn_mask", "attn_bias"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name)[rows])

    def update(self, k, v, key_mask=None):
        """Store new keys and values (B, H, n, D) with their mask (B, n; None: all real); returns
        all so far."""
        if not self.grow:
            self.k, self.v, self.key_mask = k, v, key_mask
            return k, v, key_mask
        end = self.n + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            size = max(64, 2 * end)
            grown = [x.new_empty(*x.shape[:2], size, x.shape[3]) for x in (k, v)]
            grown.append(torch.empty(len(k), size, dtype=torch.bool, device=k.device))
            if self.k is not None:
                grown[0][:, :, :self.n], grown[1][:, :, :self.n], grown[2][:, :self.n] = \
                    self.k[:, :, :self.n], self.v[:, :, :self.n], self.key_mask[:, :self.n]
            self.k, self.v, self.key_mask = grown
        self.k[:, :, self.n:end], self.v[:, :, self.n:end] = k, v
        self.key_mask[:, self.n:end] = True if key_mask is None else key_mask
        self.n = end
        return self.k[:, :, :end], self.v[:, :, :end], self.key_mask[:, :end]


class Attention(nn.Module):
    """Multi-head attention; queries and keys carry times for the rotary embedding.

    No dropout on the attention weights (it cost a third of a CPU step); blocks drop residuals.
    """

    def __init__(self, width, heads, name=""):
        super().__init__()
        self.heads, self.name = heads, name
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.rotary = RotaryTime(width // heads)

    def forward(self, x, x_time, context, context_time, key_mask, causal=False, cache=None, context_rows=None):
        """x (B, Nq, W) attends to context (B, Nk, W); key_mask (B, Nk) True where real. With
        `context_rows` (B, Nk), context is a table (R, W) and key j is its row context_rows[:, j]:
        keys and values are projected once per row (history spikes: one row per unit), not per token.

        With a cache, `context` holds only the new keys (or nothing new for a fixed memory) and
        causal queries are the last Nq positions."""
        B, Nq, W = x.shape
        q = self.rotary(self.q(x).view(B, Nq, self.heads, -1).transpose(1, 2), x_time)
        if cache is not None and cache.fixed:
            k, v, mask = cache.k, cache.v, cache.attn_mask
        else:
            kv = self.kv(context) if context_rows is None else self.kv(context)[context_rows]     # (B, Nk, 2W)
            k, v = kv.view(B, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
            k = self.rotary(k, context_time)
            if cache is not None:
                k, v, key_mask = cache.update(k, v, key_mask)
            mask = key_mask[:, None, None, :]
            if causal and Nq > 1:        # one new query (cached decoding) may see every key
                Nk = k.shape[2]
                mask = mask & torch.ones(Nq, Nk, dtype=torch.bool, device=x.device).tril(Nk - Nq)
            if not causal:               # a row with no key (e.g. no history) stays finite; causal rows see START
                mask = mask | ~mask.any(-1, keepdim=True)
            if cache is not None and not cache.grow:
                cache.attn_mask = mask
        if _captured is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            _captured.setdefault(self.name, []).append(weights if _keep_graph else weights.detach())
            y = weights @ v
        return self.out(y.transpose(1, 2).reshape(B, Nq, W))

    def step_self(self, x, rotation, cache):
        """Causal self-attention of one new token per row, x (B, W) at the time of `rotation`
        (`RotaryTime.matrix`), to itself and the tokens in `cache` (all real in generation)."""
        B, W = x.shape
        q = F.linear(x, self.q.weight, self.q.bias).view(B, self.heads, -1)
        k, v = F.linear(x, self.kv.weight, self.kv.bias).view(B, 2, self.heads, -1).unbind(1)
        q, k = (torch.cat([q, k], 1) @ rotation).split(self.heads, 1)                      # (B, H, D) each
        k, v, _ = cache.update(k[:, :, None], v[:, :, None])
        y = F.scaled_dot_product_attention(q[:, :, None], k, v)
        return F.linear(y.reshape(B, W), self.out.weight, self.out.bias)

    def step_cross(self, x, rotation, cache):
        """Cross-attention of one new token per row, x (B, W), to the memory held by a filled `cache`."""
        B, W = x.shape
        if cache.attn_bias is None:                     # the mask as an additive bias, made once
            cache.attn_bias = torch.zeros(cache.attn_mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                ~cache.attn_mask, float("-inf"))
        q = (F.linear(x, self.q.weight, self.q.bias).view(B, self.heads, -1) @ rotation)[:, :, None]
        y = F.scaled_dot_product_attention(q, cache.k, cache.v, attn_mask=cache.attn_bias)
        return F.linear(y.reshape(B, W), self.out.weight, self.out.bias)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention (optional), cross-attention to a memory
    (optional), MLP."""

    def __init__(self, width, heads, mlp_ratio, dropout, cross=False, name="", self_attend=True):
        super().__init__()
        self.attn = None
        if self_attend:
            self.norm1 = nn.LayerNorm(width)
            self.attn = Attention(width, heads, f"{name}.self")
        self.cross = None
        if cross:
            self.norm2 = nn.LayerNorm(width)
            self.cross = Attention(width, heads, f"{name}.cross")
        self.norm3 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    @property
    def rotary(self):
        return (self.attn or self.cross).rotary

    def forward(self, x, t, mask, causal=False, memory=None, cache=None):
        """memory: (tokens, times, mask) for cross-attention, or (table, times, mask, rows) with the
        tokens as rows of a table (see `Attention`); cache: (self, cross) KVCaches."""
        if x.shape[1] == 0:                          # e.g. no history spikes in the whole batch
            return x
        self_cache, cross_cache = cache or (None, None)
        t = t if isinstance(t, tuple) else self.rotary.angles(t)      # shared by self- and cross-attention
        if self.attn is not None:
            h = self.norm1(x)
            x = x + self.drop(self.attn(h, t, h, t, mask, causal, self_cache))
        if self.cross is not None:
            m, m_time, m_mask, *rows = memory
            x = x + self.drop(self.cross(self.norm2(x), t, m, m_time, m_mask, cache=cross_cache,
                                         context_rows=rows[0] if rows else None))
        return x + self.mlp(self.norm3(x))

    def step(self, x, rotation, cache):
        """`forward` of one new token per row, x (B, W), with filled (self, cross) caches, in
        fewer operations (generation; no dropout)."""
        def norm(layer, h):
            return F.layer_norm(h, layer.normalized_shape, layer.weight, layer.bias, layer.eps)
        if self.attn is not None:
            x = x + self.attn.step_self(norm(self.norm1, x), rotation, cache[0])
        if self.cross is not None:
            x = x + self.cross.step_cross(norm(self.norm2, x), rotation, cache[1])
        up, down = self.mlp[0], self.mlp[2]
        return x + F.linear(F.gelu(F.linear(norm(self.norm3, x), up.weight, up.bias)), down.weight, down.bias)


def run_stack(blocks, x, t, mask, **kwargs):
    """Apply blocks in turn, with the rotary angles of times t computed once for all of them."""
    if len(blocks) and x.shape[1]:
        t = blocks[0].rotary.angles(t)
    for blk in blocks:
        x = blk(x, t, mask, **kwargs)
    return x


def new_caches(blocks):
    """One (self, cross) cache pair per block, for step-by-step decoding."""
    return [(KVCache(grow=True), KVCache(grow=False)) for _ in blocks]


def stack(n, width, heads, mlp_ratio, dropout, name, cross=False):
    return nn.ModuleList(Block(width, heads, mlp_ratio, dropout, cross, f"{name}.{i}") for i in range(n))
