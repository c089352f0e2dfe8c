"""Generation: windows of spikes sampled one token at a time, many windows at once.

Each row of the generating batch holds one window. Rows advance independently (continuous
batching): when a row's window ends (END, or the spike cap), its spikes go back to the window's
source and the row takes the next window the source has ready: the same trial's next window,
whose history is what was just generated (closed loop), or another trial's first. A window
draws its random numbers from its own counter-based stream (`draws.Draws`, one row per trial
repeat), so its spikes depend neither on which windows share the batch, nor on the number of
rows, nor on the cache (up to floating-point rounding; exact in the float64 tests): the decoder
keeps each row's keys and values (`nn.SelfCache`, `nn.MemoryCache`) and a point process each
row's coupling term, or, without the cache (the naive reference), the whole model is re-run for
every token.

A source hands out windows and takes their spikes back:
- `take(n)` -> `Windows` (at most n ready to start) or None;
- `put(row, bins, units, truncated)`: a window's spikes (bins from its start, unit tokens) and
  whether it hit the spike cap;
- `waiting()`: draw rows (trial repeats) with windows still to generate, started or not.
The `Windows` it hands out may say which windows come after them (`Windows.upcoming`): their
frames and behaviour, known in advance, are then encoded in one batch with the first new ones;
and which keys other windows will still start with (`Windows.pending`): encoded windows of other
keys are let go.
"""
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.profiler import record_function

from .data.vocab import START
from .nn import new_caches

KEPT_STIMULI = 64       # encoded trial windows kept for repeats that reach them later (~1.2 MB each at the published size),
                        # at least AHEAD + 1 per generating row (the windows a row had encoded ahead)
AHEAD = 8               # later windows encoded with a new one (at the published size ~2x cheaper a window than alone)


@dataclass
class Sampling:
    """How spikes are drawn: softmax temperature, top-k (0: all), top-p (1: all), and a cap on
    spikes per window (a model that never says END would otherwise run forever)."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_spikes: int = 1000


@dataclass
class Windows:
    """Windows to start: each one's row in the draws (a trial repeat; at most one window of a row
    at a time), their collated context (`batch`: history, frames and behaviour filled in, the
    current sequence ignored), and `keys`: windows with the same key show the same recorded frames
    and behaviour (repeats of a trial window), which are then encoded once. `upcoming(n)`, if
    given: (batch, keys) of at most n windows the same rows reach later and not offered before,
    or None. `pending(key)`, if given: whether a window of that key is still to start."""
    rows: list
    batch: dict
    keys: list
    upcoming: Callable[[int], tuple | None] | None = None
    pending: Callable[[object], bool] | None = None


@torch.inference_mode()
def generate(model, source, draws, allowed_units, sampling=None, cache=True, slots=16, refill=None):
    """Generate every window `source` hands out, `slots` rows at a time. Units outside
    `allowed_units` (bool, vocabulary size) and gaps that would leave a window get no
    probability. A free row waits until `refill` rows are free (default a quarter of them) or
    none generates, so that new windows' contexts are encoded in groups."""
    if model.training:
        raise RuntimeError("generation needs the model in eval mode (its single-token step has no dropout)")
    rows = _Rows(model, draws, allowed_units, sampling or Sampling(), cache, slots)
    refill = refill or max(1, slots // 4)
    while True:
        free = np.flatnonzero(rows.row < 0)
        if len(free) and (len(free) >= min(refill, len(rows.row)) or len(free) == len(rows.row)):
            with _part("window data"):
                windows = source.take(len(free))
            if windows is not None:
                rows.start(free[:len(windows.rows)], windows)
        if (rows.row < 0).all():
            if source.waiting():
                raise RuntimeError("the source has windows to generate but hands none out")
            return
        if source.waiting() < len(rows.row):               # more rows than trial repeats left: the idle leave
            rows.keep(source.waiting())
        rows.step(source)


class _Rows:
    """The generating batch: per row its window's tokens so far (START first), decoder caches and
    unit drives, and its draw row (-1: free)."""

    def __init__(self, model, draws, allowed_units, sampling, cache, size):
        self.model, self.draws, self.allowed, self.sampling, self.cache = model, draws, allowed_units, sampling, cache
        device = model.unit_emb.weight.device
        self.row = np.full(size, -1)
        self.units = torch.full((size, 64), START, device=device)
        self.bins = torch.zeros((size, 64), dtype=torch.long, device=device)
        self.n = torch.ones(size, dtype=torch.long, device=device)               # tokens held, START included
        self.drive = None       # (size, 1 or 2, V) unit drives; point process with the cache: window_bias
        self.coupling_input = None  # (size, n_bins, V) point process with the cache: of the spikes so far
        self.context = [None] * size            # 1-row context batches (naive recompute)
        self.stimuli = {}                       # key -> encoded frames and behaviour of a window (1 row)
        self.kept = max(KEPT_STIMULI, size * (AHEAD + 1))                      # ... at most this many
        self.batch = None                       # ... stacked (naive recompute)
        self.caches = new_caches(model.decoder, size) if cache else None
        dt_res = model.cfg.window.dt_res
        times = (torch.arange(model.n_dt, device=device).double() * dt_res).float()
        self.rotation = model.decoder[0].rotary.matrix(times).to(model.unit_emb.weight.dtype)   # of every bin
        self.too_many = torch.arange(model.n_dt + 1, device=device) < model.end_class  # what a full window may not draw

    def start(self, slots, windows):
        """Rows `slots` start `windows`: their context encoded, their caches given its memory."""
        model, batch = self.model, windows.batch
        index = torch.as_tensor(slots, device=self.n.device)
        if self.cache:                                   # (without it, every step encodes the context)
            with _part("context"):
                stimulus, stimulus_keys = self.stimulus(windows)
                memory, _ = model.encode_context(batch, model.context_parts(batch, stimulus))
                drive = model.unit_drive(memory)
                model.start_caches(self.caches, index, memory, stimulus_keys)
                if model.point_process:               # what stays fixed over the window, once
                    drive = model.window_bias(batch, drive)
                    coupling = model.coupling_input(batch)           # of the history; the spikes add theirs
                    if self.coupling_input is None:
                        self.coupling_input = coupling.new_zeros(len(self.row), *coupling.shape[1:])
                    self.coupling_input[index] = coupling
            if self.drive is None:
                self.drive = drive.new_zeros(len(self.row), *drive.shape[1:])
            self.drive[index] = drive
        self.row[slots] = windows.rows
        self.n[index], self.units[index, 0], self.bins[index, 0] = 1, START, 0
        if not self.cache:
            for j, s in enumerate(slots):
                self.context[s] = _take(batch, [j])
            self.batch = _stack_rows([c if c is not None else self.context[slots[0]] for c in self.context])

    def stimulus(self, windows):
        """The encoded frames and behaviour of `windows` (`stimulus_parts`) and their decoder keys
        (`stimulus_keys`), computed once per key and kept for the windows of the same key that
        start later (those still `Windows.pending`, up to `self.kept`, least recently used dropped
        first); the keys padded as the parts are, so that they sit where the memory holds those
        tokens. New keys are encoded in one batch with up to `AHEAD` of the windows that come
        after them (`Windows.upcoming`)."""
        fresh = {}
        for j, key in enumerate(windows.keys):
            if key in self.stimuli:
                self.stimuli[key] = self.stimuli.pop(key)                    # most recently used last
            else:
                fresh.setdefault(key, j)
        if fresh:
            batch, new = _take(windows.batch, list(fresh.values())), list(fresh)
            encodes = self.model.uses_frames or self.model.inputs                  # frames or behaviour at all
            later = windows.upcoming(AHEAD) if windows.upcoming and encodes else None
            if later is not None:                                           # (a source may offer keys held)
                ahead = [j for j, key in enumerate(later[1]) if key not in self.stimuli and key not in fresh]
                batch, new = _stack_rows([batch, _take(later[0], ahead)]), new + [later[1][j] for j in ahead]
            encoded = self.model.stimulus_parts(batch)
            keys = self.model.stimulus_keys(encoded)                        # kind -> (layers, 2, n, H, M, D)
            for i, key in enumerate(new):
                self.stimuli[key] = ({kind: [p[i:i + 1].clone() for p in part] for kind, part in encoded.items()},
                                     {kind: k[:, :, i:i + 1].movedim(2, 0).clone() for kind, k in keys.items()})
        held = [self.stimuli[key] for key in windows.keys]
        if windows.pending:
            for key in [key for key in self.stimuli if not windows.pending(key)]:
                del self.stimuli[key]
        while len(self.stimuli) > max(self.kept, len(windows.keys)):
            self.stimuli.pop(next(iter(self.stimuli)))
        parts, keys = zip(*held)
        return ({kind: tuple(_padded_cat([p[kind][m] for p in parts]) for m in range(3)) for kind in parts[0]},
                {kind: _padded_cat([k[kind] for k in keys], dim=4).movedim(0, 2) for kind in keys[0]})

    def keep(self, n):
        """Keep the generating rows and free ones up to `n` rows in all."""
        busy = self.row >= 0
        keep = np.sort(np.concatenate([np.flatnonzero(busy), np.flatnonzero(~busy)[:max(0, n - busy.sum())]]))
        index = torch.as_tensor(keep, device=self.n.device)
        self.row, self.units, self.bins, self.n = self.row[keep], self.units[index], self.bins[index], self.n[index]
        self.drive = self.drive[index] if self.drive is not None else None
        self.coupling_input = self.coupling_input[index] if self.coupling_input is not None else None
        if not self.cache:
            self.context = [self.context[s] for s in keep]
            self.batch = _take(self.batch, index)
        if self.cache:
            own, held, _ = self.caches
            for c in (own, *held):
                c.select(index)

    def uniforms(self, skip):
        """The next draw of every row not in `skip` (float64, 0 for those skipped)."""
        u, draw = np.zeros(len(self.row)), ~skip.cpu().numpy()
        u[draw] = self.draws.uniform(self.row[draw])
        return torch.from_numpy(u).to(self.n.device)

    def step(self, source):
        """Every row takes one token: a gap (or END) and, unless END, a unit; ended windows go back to `source`."""
        model, sampling = self.model, self.sampling
        free = torch.as_tensor(self.row < 0, device=self.n.device)
        rows = torch.arange(len(self.row), device=self.n.device)
        last = self.n - 1
        unit, bin_ = self.units[rows, last], self.bins[rows, last]
        so_far, memory = None, None
        if not self.cache:
            L = int(self.n.max())
            so_far = {"unit": self.units[:, :L], "time": (self.bins[:, :L].double() * model.cfg.window.dt_res).float(),
                      "mask": torch.arange(L, device=self.n.device) < self.n[:, None]}
            with _part("context"):
                memory, _ = model.encode_context(self.batch)
                self.drive = model.unit_drive(memory)
        if self.cache and (self.row < 0).any():           # a free row's cache holds its START alone
            self.caches[0].clear(self.row < 0)
        with _part("decoder"):
            x = (model.decode_step(unit, self.rotation[bin_], self.caches) if self.cache
                 else model.decode(so_far, memory)[rows, last])[:, None]
        with _part("heads"):
            if not model.point_process:
                bias = self.drive
            elif self.cache:
                bias = model.coupled(self.drive, self.coupling_input)
            else:
                bias = model.unit_bias(self.batch, so_far, memory, self.drive)
            gap_log_p = model.gap_log_probs(x, bias, bin_[:, None], unit[:, None])[:, 0]
            full = (last >= sampling.max_spikes) & ~free
            if full.any():
                gap_log_p = gap_log_p.masked_fill(full[:, None] & self.too_many, float("-inf"))
        with _part("sampling"):
            dt = sample_classes(gap_log_p, self.uniforms(free), free, sampling, fill=model.end_class)
            ended = ~free & (dt == model.end_class)
        with _part("heads"):
            unit_logits = model.unit_logits(x, bias, dt[:, None], bin_[:, None], unit[:, None])[:, 0]
        with _part("sampling"):
            skip = free | ended
            new = sample_classes(unit_logits.masked_fill(~self.allowed, float("-inf")), self.uniforms(skip), skip,
                                 sampling, fill=START)
        with _part("bookkeeping"):
            for s in torch.nonzero(ended)[:, 0].tolist():                  # windows that ended: their spikes
                n = int(self.n[s])
                source.put(int(self.row[s]), self.bins[s, 1:n].tolist(), self.units[s, 1:n].tolist(), bool(full[s]))
                self.row[s] = -1
            go = ~skip
            if int(self.n.max()) >= self.units.shape[1]:                    # token buffers double when full
                self.units = torch.cat([self.units, torch.full_like(self.units, START)], 1)
                self.bins = torch.cat([self.bins, torch.zeros_like(self.bins)], 1)
            self.units[rows, self.n] = new              # every row writes past its tokens; those that took one keep it
            self.bins[rows, self.n] = bin_ + dt
            self.n += go
            if self.coupling_input is not None and go.any():
                self.coupling_input[go] += model.spike_coupling(new[go], (bin_ + dt)[go])


def _part(name):
    """A label of generation's parts for torch.profiler while it records (bench/profile_generate.py);
    otherwise nothing: a label costs ~10 µs a step, a few percent of a small model's step."""
    return record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


def sample_classes(logits, u, skip, sampling, fill):
    """One class per row by inverse CDF of its uniform draw u (B,) (a row's own counter-based
    draw, so its class does not depend on the other rows). Rows in `skip` get `fill`."""
    logits = logits.double() if sampling.temperature == 1 else logits.double() / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if sampling.top_p < 1:
        p_sorted, order = probs.sort(-1, descending=True)
        beyond = (p_sorted.cumsum(-1) - p_sorted) >= sampling.top_p     # keep the smallest set reaching top_p
        probs = probs.masked_fill(torch.zeros_like(beyond).scatter(-1, order, beyond), 0.0)
    cdf = probs.cumsum(-1)
    drawn = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], side="right")[:, 0].clamp(max=cdf.shape[-1] - 1)
    return drawn.masked_fill(skip, fill)


def _take(tree, rows):
    """Rows `rows` of every tensor of a (nested) batch dict."""
    return {k: _take(v, rows) if isinstance(v, dict) else v[rows] for k, v in tree.items()}


def _stack_rows(trees):
    """One batch of the (nested) batch dicts `trees`, each tensor padded along its second
    dimension to the longest (`_padded_cat`)."""
    return {key: _stack_rows([t[key] for t in trees]) if isinstance(first, dict) else _padded_cat([t[key] for t in trees])
            for key, first in trees[0].items()}


def _padded_cat(parts, dim=1):
    """Tensors concatenated along the first dimension, each padded with zeros (False in masks)
    along dimension `dim` to the longest."""
    if parts[0].dim() <= dim or all(p.shape[dim] == parts[0].shape[dim] for p in parts):
        return torch.cat(parts)
    L = max(p.shape[dim] for p in parts)
    return torch.cat([torch.cat([p, p.new_zeros(*p.shape[:dim], L - p.shape[dim], *p.shape[dim + 1:])], dim)
                      for p in parts])
