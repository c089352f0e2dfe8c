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
        n = head_dim // 4
        periods = torch.logspace(math.log10(t_min), math.log10(t_max), n, dtype=torch.float64)
        self.register_buffer("omega", (2 * math.pi / periods).float(), persistent=False)

    def angles(self, t):
        """cos and sin (B, 1, N, head_dim / 4) of times t (B, N), computed once for all layers of a stack."""
        angle = t.float()[:, None, :, None] * self.omega
        return angle.cos(), angle.sin()

    def forward(self, x, t):
        """x (B, H, N, D); t (B, N) seconds, or their `angles`."""
        n = self.omega.numel()
        cos, sin = t if isinstance(t, tuple) else self.angles(t)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        a, b, rest = x.split([n, n, x.shape[-1] - 2 * n], -1)   # split, not slices: its backward is one cat
        return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


class KVCache:
    """Rotated keys and values kept between decoding steps. `grow=True` (self-attention) appends
    each step's keys; otherwise (cross-attention to a fixed memory) the first keys, values and
    attention mask are reused."""

    def __init__(self, grow):
        self.grow, self.k, self.v, self.key_mask, self.attn_mask = grow, None, None, None, None

    @property
    def fixed(self):
        return self.k is not None and not self.grow

    def select(self, rows):
        """Keep the batch rows `rows` (rows that finished leave a generating batch)."""
        self.k, self.v = self.k[rows], self.v[rows]
        self.key_mask = None if self.key_mask is None else self.key_mask[rows]
        self.attn_mask = None if self.attn_mask is None else self.attn_mask[rows]

    def update(self, k, v, key_mask):
        if self.k is not None:
            k, v = torch.cat([self.k, k], 2), torch.cat([self.v, v], 2)
            key_mask = torch.cat([self.key_mask, key_mask], 1)
        self.k, self.v, self.key_mask = k, v, key_mask
        return k, v, key_mask


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
