"""Reusable blocks: rotary time embedding, attention with padding masks, transformer blocks.

Attention weights can be captured for analysis with `capture_attention()`; when nothing
captures, attention runs through `F.scaled_dot_product_attention` and stores nothing.
"""
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_captured = None  # dict name -> list of (B, H, Nq, Nk) weights while capturing


@contextmanager
def capture_attention():
    """Collect every attention module's weights (softmax) by module name."""
    global _captured
    previous, _captured = _captured, {}
    try:
        yield _captured
    finally:
        _captured = previous


class RotaryTime(nn.Module):
    """Rotates half of each head's dimensions by angles t * 2π / period, with periods spread
    log-uniformly over [t_min, t_max] seconds, so q·k depends only on time differences."""

    def __init__(self, head_dim, t_min=1e-4, t_max=2.0):
        super().__init__()
        n = head_dim // 4
        periods = torch.logspace(math.log10(t_min), math.log10(t_max), n, dtype=torch.float64)
        self.register_buffer("omega", (2 * math.pi / periods).float(), persistent=False)

    def forward(self, x, t):
        """x (B, H, N, D), t (B, N) seconds."""
        n = self.omega.numel()
        angle = t.float()[:, None, :, None] * self.omega
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        a, b, rest = x[..., :n], x[..., n:2 * n], x[..., 2 * n:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos, rest], dim=-1)


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

    def forward(self, x, x_time, context, context_time, key_mask, causal=False):
        """x (B, Nq, W) attends to context (B, Nk, W); key_mask (B, Nk) True where real."""
        B, Nq, W = x.shape
        Nk = context.shape[1]
        q = self.q(x).view(B, Nq, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(B, Nk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, x_time), self.rotary(k, context_time)
        mask = key_mask[:, None, None, :]
        if causal:
            mask = mask & torch.ones(Nq, Nk, dtype=torch.bool, device=x.device).tril()
        mask = mask | ~mask.any(-1, keepdim=True)    # a row with no key (e.g. no history) stays finite
        if _captured is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            _captured.setdefault(self.name, []).append(weights.detach())
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

    def forward(self, x, t, mask, causal=False, memory=None):
        """memory: (tokens, times, mask) for cross-attention."""
        if x.shape[1] == 0:                          # e.g. no history spikes in the whole batch
            return x
        if self.attn is not None:
            h = self.norm1(x)
            x = x + self.drop(self.attn(h, t, h, t, mask, causal))
        if self.cross is not None:
            m, m_time, m_mask = memory
            x = x + self.drop(self.cross(self.norm2(x), t, m, m_time, m_mask))
        return x + self.mlp(self.norm3(x))


def stack(n, width, heads, mlp_ratio, dropout, name, cross=False):
    return nn.ModuleList(Block(width, heads, mlp_ratio, dropout, cross, f"{name}.{i}") for i in range(n))
