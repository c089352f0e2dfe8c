"""Reusable blocks: rotary time embedding, attention with padding masks, transformer blocks.

Attention weights can be captured for analysis with `capture_attention()`; when nothing
captures, attention runs through `F.scaled_dot_product_attention` and stores nothing.
Caches of keys and values (`SelfCache`, `MemoryCache`) let a decoder take one new token per row
and step, each row at its own position (generation).
"""
import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PACKED_FROM = 2 ** 17  # weights (in x out) from which `laid_out` packs a layer for oneDNN (256 x 512)
PACK_BELOW = 0.75      # outside training, a stack runs on its real tokens alone when they are fewer than this share of its positions
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


class SelfCache:
    """Rotated keys and values of each generating row's tokens so far, in every layer of a decoder
    (inference only), written in place at the row's own position: rows advance independently, and
    a row that starts a new window starts again from none (`clear`). Where a step's tokens go and
    what each row must not see are worked out once per step for all layers (`advance`). Lengths
    are kept on the host, so a step needs no device synchronisation, and rows all at one position
    are written as a slice and need no mask."""

    def __init__(self, rows, layers, heads, head_dim, dtype, device):
        self.length = np.zeros(rows, dtype=np.int64)             # tokens held per row
        self.layers, self.heads, self.head_dim, self.dtype, self.device = layers, heads, head_dim, dtype, device
        self.kv = None                                           # (layers, B, 2, H, capacity, D)
        self.end, self.index, self.bias = 0, None, None

    def clear(self, rows):
        self.length[_host(rows)] = 0

    def select(self, rows):
        """Keep the batch rows `rows` (the others leave the generating batch)."""
        self.length = self.length[_host(rows)]
        if self.kv is not None:
            self.kv = self.kv[:, rows]

    def advance(self):
        """Each row takes one token this step: its position in every layer (buffers double when
        full), and the additive attention bias (B, 1, 1, L) hiding what a row does not hold (None
        when no row holds fewer tokens than another)."""
        B, device = len(self.length), self.device
        self.end = end = int(self.length.max()) + 1
        if self.kv is None or end > self.kv.shape[4]:
            grown = torch.zeros(self.layers, B, 2, self.heads, max(64, 2 * end), self.head_dim, dtype=self.dtype,
                                device=device)
            if self.kv is not None:
                grown[:, :, :, :, :self.kv.shape[4]] = self.kv
            self.kv = grown
        self.index = self.bias = None
        if not (self.length == end - 1).all():
            at = torch.tensor(self.length, device=device)            # a copy: lengths move on below
            self.index = (torch.arange(B, device=device), at)
            self.bias = torch.zeros(B, end, dtype=self.dtype, device=device).masked_fill(
                torch.arange(end, device=device) > at[:, None], float("-inf"))[:, None, None]
        self.length += 1

    def append(self, layer, k, v):
        """Store this step's token of every row in `layer`, k and v (B, H, D) (after `advance`),
        stacked and written by one slice or indexed assignment; returns the layer's keys and values
        (B, H, L, D) and the step's attention bias."""
        kv, new = self.kv[layer], torch.stack((k, v), 1)
        if self.index is None:
            kv[:, :, :, self.end - 1] = new
        else:
            kv[self.index[0], :, :, self.index[1]] = new
        return kv[:, 0, :, :self.end], kv[:, 1, :, :self.end], self.bias


class MemoryCache:
    """Rotated keys and values of each generating row's memory (cross-attention) with its mask as
    an additive bias; a row's entries are replaced when it starts a new window (`put`)."""

    def __init__(self, rows):
        self.rows = rows
        self.k = self.v = self.bias = None

    def select(self, rows):
        self.rows = len(rows)
        self.k, self.v, self.bias = self.k[rows], self.v[rows], self.bias[rows]

    def put(self, rows, k, v, mask):
        """Rows `rows` take the memory keys and values (n, H, M, D) with mask (n, M)."""
        n, H, M, D = k.shape
        if self.k is None or M > self.k.shape[2]:                # wider memories widen every row
            old = self.k.shape[2] if self.k is not None else 0
            grown = [k.new_zeros(self.rows, H, M, D) for _ in range(2)]
            bias = k.new_full((self.rows, 1, 1, M), float("-inf"))
            if self.k is not None:
                grown[0][:, :, :old], grown[1][:, :, :old], bias[..., :old] = self.k, self.v, self.bias
            else:
                bias[...] = 0.0                                  # rows never given a memory stay finite
            self.k, self.v, self.bias = *grown, bias
        self.k[rows, :, :M], self.v[rows, :, :M] = k, v
        self.bias[rows] = float("-inf")
        self.bias[rows, 0, 0, :M] = torch.zeros_like(mask, dtype=k.dtype).masked_fill(~mask, float("-inf"))


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

    def forward(self, x, x_time, context, context_time, key_mask, causal=False, context_rows=None, packing=None):
        """x (B, Nq, W) attends to context (B, Nk, W) (x (1, Nq, W): the same queries for every row);
        key_mask (B, Nk) True where real. With `context_rows` (B, Nk), context is a table (R, W) and
        key j is its row context_rows[:, j]: keys and values are projected once per row (history
        spikes: one row per unit), not per token.
        With `packing` (self-attention), x and context are the same batch's real tokens (N, W) (`Packing`)."""
        q = self.rotary(self._heads(self.q(x), packing), x_time)
        k, v = self.memory_kv(context, context_time, context_rows, packing)
        q = q.expand(len(k), -1, -1, -1)                  # one row of queries for every context: projected once
        B, _, Nq, _ = q.shape
        mask = key_mask[:, None, None, :]
        if causal:
            Nk = k.shape[2]
            mask = mask & torch.ones(Nq, Nk, dtype=torch.bool, device=x.device).tril(Nk - Nq)
        else:                            # a row with no key (e.g. no history) stays finite; causal rows see START
            mask = mask | ~mask.any(-1, keepdim=True)
        if _captured is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            _captured.setdefault(self.name, []).append(weights if _keep_graph else weights.detach())
            y = weights @ v
        y = y.transpose(1, 2).reshape(B, Nq, -1)
        return self.out(y if packing is None else packing.pack(y))

    def memory_kv(self, context, context_time, context_rows=None, packing=None):
        """Rotated keys and values (B, H, Nk, D) of the context tokens (see `forward`)."""
        kv = self.kv(context) if context_rows is None else self.kv(context)[context_rows]     # (B, Nk, 2W)
        k, v = self._heads(kv, packing, 2).unbind(-4)
        return self.rotary(k, context_time), v

    def _heads(self, y, packing, n=1):
        """Projections (B, N, n W), or packed (N, n W), as heads (B, [n,] H, N, D)."""
        y = y if packing is None else packing.pad(y)
        return y.view(*y.shape[:2], *((n,) if n > 1 else ()), self.heads, -1).movedim(1, -2)

    def step_weights(self, own_keys, rows):
        """Its layers `laid_out` for `step_self` (`own_keys`: queries, keys and values in one
        product) or `step_cross` (queries, scaled by 1/√head_dim; the memory's keys are cached),
        of at most `rows` rows."""
        if own_keys:
            return {"qkv": laid_out(self.q, self.kv, rows=rows), "out": laid_out(self.out, rows=rows)}
        return {"q": laid_out(self.q, rows=rows, scale=self.rotary.head_dim ** -0.5), "out": laid_out(self.out, rows=rows)}

    def step_self(self, x, rotation, cache, layer, weights):
        """Causal self-attention of one new token per row, x (B, W) at the time of `rotation`
        (`RotaryTime.matrix`), to itself and the row's tokens in `cache` (a `SelfCache`, at
        `layer`); `weights`: `step_weights(own_keys=True)`."""
        B, W = x.shape
        qkv = product(x, weights["qkv"]).view(B, 3, self.heads, -1)
        q, k = (qkv[:, :2].reshape(B, 2 * self.heads, -1) @ rotation).split(self.heads, 1)   # (B, H, D) each
        k, v, bias = cache.append(layer, k, qkv[:, 2])
        y = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=bias)
        return product(y.reshape(B, W), weights["out"])

    def step_cross(self, x, rotation, cache, weights):
        """Cross-attention of one new token per row, x (B, W), to its memory in `cache` (a
        `MemoryCache`); `weights`: `step_weights(own_keys=False)`. Written out: at one query per
        row `F.scaled_dot_product_attention` was ~10% of a 16-row step slower (BENCHMARKS). No
        row's bias is -inf throughout (a memory ends with the null token; rows never given one
        have bias 0), else its softmax would be NaN where that kernel gives 0."""
        B, W = x.shape
        q = (product(x, weights["q"]).view(B, self.heads, -1) @ rotation)[:, :, None]
        attend = (q @ cache.k.transpose(-1, -2)).add_(cache.bias).softmax(-1)            # (B, H, 1, M)
        return product((attend @ cache.v).reshape(B, W), weights["out"])


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

    def forward(self, x, t, mask, causal=False, memory=None, packing=None):
        """memory: (tokens, times, mask) for cross-attention, or (table, times, mask, rows) with the
        tokens as rows of a table (see `Attention`). With `packing` (no cross-attention), x holds
        the real tokens alone (N, W) (`Packing`)."""
        if x.shape[-2] == 0:                          # e.g. no history spikes in the whole batch
            return x
        x = self.attend(x, t, mask, causal, memory, packing)
        return x + self.mlp(self.norm3(x))

    def attend(self, x, t, mask, causal=False, memory=None, packing=None):
        """`forward` before the MLP: x after its attention's residuals. One row of queries x (1, N, W)
        reads each row of a memory of B rows: (B, N, W)."""
        t = t if isinstance(t, tuple) else self.rotary.angles(t)      # shared by self- and cross-attention
        if self.attn is not None:
            h = self.norm1(x)
            x = x + self.drop(self.attn(h, t, h, t, mask, causal, packing=packing))
        if self.cross is not None:
            m, m_time, m_mask, *rows = memory
            x = x + self.drop(self.cross(self.norm2(x), t, m, m_time, m_mask, context_rows=rows[0] if rows else None))
        return x

    def step_weights(self, rows):
        """The block's linear layers `laid_out` for `step` of at most `rows` rows: copies, but for a
        narrowing layer's view of its live weight, so to be made again after the weights change
        (each generation does)."""
        return {"attn": self.attn.step_weights(True, rows) if self.attn is not None else None,
                "cross": self.cross.step_weights(False, rows) if self.cross is not None else None,
                "up": laid_out(self.mlp[0], rows=rows), "down": laid_out(self.mlp[2], rows=rows)}

    def step(self, x, rotation, own, layer, held, weights):
        """`forward` of one new token per row, x (B, W), with the decoder's `SelfCache` (this block
        its `layer`), the block's `MemoryCache` and its `step_weights()`, in fewer operations
        (generation; no dropout)."""
        def norm(module, h):
            return F.layer_norm(h, module.normalized_shape, module.weight, module.bias, module.eps)
        if self.attn is not None:
            x = x + self.attn.step_self(norm(self.norm1, x), rotation, own, layer, weights["attn"])
        if self.cross is not None:
            x = x + self.cross.step_cross(norm(self.norm2, x), rotation, held, weights["cross"])
        return product(product(norm(self.norm3, x), weights["up"], gelu=True), weights["down"], residual=x)


def run_stack(blocks, x, t, mask):
    """Apply self-attending blocks in turn to x (B, L, W), with the rotary angles of times t
    computed once for all of them. Outside training, a batch whose real tokens are fewer than
    `PACK_BELOW` of its positions runs on those alone (`Packing`; generation's groups of history
    windows are ~45% padding), and its padding's outputs are zeros."""
    if not len(blocks) or not x.shape[1]:
        return x
    t = blocks[0].rotary.angles(t)
    packing = Packing(mask) if not blocks[0].training and mask.sum() < PACK_BELOW * mask.numel() else None
    x = x if packing is None else packing.pack(x)
    for blk in blocks:
        x = blk(x, t, mask, packing=packing)
    return x if packing is None else packing.pad(x)


class Packing:
    """The real tokens of a padded batch (mask (B, L) True where real) side by side (N, ...):
    linear layers and MLPs then skip the padding, and attention lays them out padded (`pad`)."""

    def __init__(self, mask):
        self.shape, self.where = mask.shape, mask.nonzero(as_tuple=True)

    def pack(self, x):
        """(B, L, ...) -> (N, ...)"""
        return x[self.where]

    def pad(self, x):
        """(N, ...) -> (B, L, ...), zeros where padded."""
        return x.new_zeros(*self.shape, *x.shape[1:]).index_put_(self.where, x)


def new_caches(blocks, rows):
    """A decoder's caches for `rows` generating rows: one `SelfCache` for all its blocks, a
    `MemoryCache` per block, and each block's `step_weights()` (valid while the weights stay as
    they are: made anew for each generation)."""
    attn, weight = blocks[0].attn, blocks[0].attn.q.weight                 # a decoder's blocks all self-attend
    own = SelfCache(rows, len(blocks), attn.heads, weight.shape[1] // attn.heads, weight.dtype, weight.device)
    return own, [MemoryCache(rows) for _ in blocks], [blk.step_weights(rows) for blk in blocks]


def product(x, laid, gelu=False, residual=None):
    """`residual` + act(x @ weight + bias) of a `laid_out` layer, x (B, in) -> (B, out), act GELU
    if `gelu`, else none: of more than one row by oneDNN in one call when the layer is packed for it."""
    weight, bias, packed = laid
    assert not (gelu and residual is not None), "product: an activation or a residual, not both"
    if packed is not None and len(x) > 1:
        return packed_product(x, packed, bias, gelu, residual)
    y = torch.addmm(bias, x, weight)
    y = F.gelu(y) if gelu else y
    return y if residual is None else residual + y


def packed_product(x, packed, bias, gelu=False, residual=None):
    """`product` by oneDNN, with a weight packed for it (`laid_out`) and the activation or the
    residual in the same call, at any number of rows."""
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, packed, bias, "add")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


def laid_out(*linears, rows=1, scale=1.0):
    """Linear layers of one input as one (weight (in, out), bias, packed) for `product` with at most
    `rows` rows, their outputs side by side, times `scale`. The weight: the transposed weight copied
    contiguous, unless it narrows (in > out), when the (out, in) layout is kept (a view of a single
    layer's). On this project's CPU a one-row product reads a widening weight ~2x faster so, and 16
    rows read every weight 5-17% faster (BENCHMARKS, "Weights laid out"). `packed`: for more than
    one row, a float32 layer of at least `PACKED_FROM` weights is also packed for oneDNN (else
    None), whose products of 2-16 rows were 1.4-3x faster than MKL's here at the published width, with
    `product`'s activation or residual in the same call; a oneDNN call costs ~20 µs however
    small, so smaller layers stay with MKL (BENCHMARKS, "oneDNN")."""
    weight = torch.cat([m.weight.detach() for m in linears]) if len(linears) > 1 else linears[0].weight.detach()
    bias = torch.cat([m.bias.detach() for m in linears])
    weight, bias = (weight, bias) if scale == 1 else (weight * scale, bias * scale)
    packed = None
    if rows > 1 and weight.numel() >= PACKED_FROM and weight.dtype == torch.float32 and weight.device.type == "cpu" \
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), rows)
    weight = weight.t()
    return (weight if weight.shape[0] > weight.shape[1] else weight.contiguous()), bias, packed


def _host(rows):
    """Row indices or a row mask as a host array (for host-side bookkeeping)."""
    return rows.cpu().numpy() if torch.is_tensor(rows) else np.asarray(rows)


def stack(n, width, heads, mlp_ratio, dropout, name, cross=False):
    return nn.ModuleList(Block(width, heads, mlp_ratio, dropout, cross, f"{name}.{i}") for i in range(n))
