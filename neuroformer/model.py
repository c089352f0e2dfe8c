"""The Neuroformer model: predicts the next spike's gap and unit from history, video and behaviour.

Read top to bottom: embeddings -> context encoders (history, optionally compressed into latent
tokens; visual; behaviour) -> one memory -> causal decoder over the current window -> heads (Δ/END,
then unit given Δ) with each unit's bias (its drive read out of the memory by its own query, and
with `point_process` a GLM inside the model: baseline, drive and coupling to past spikes as a log
rate per bin) -> behaviour queries (with the window's population vector and, given ΔF/F traces,
calcium tokens read into latents) -> losses -> the single-token decoder step that generation
(`generation.py`, docs/design.md §4) drives. The likelihood is the one of docs/design.md §2: NLL
per spike (nats) = -[Σ log p(Δ or END) + Σ log p(unit | Δ)] / number of spikes; gaps that would
leave the window have no probability.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import make_backbone
from .bases import raised_cosines
from .data.vocab import SPECIALS
from .data.windows import IGNORE
from .nn import Block, run_stack, stack

HISTORY, VISUAL, BEHAVIOR, NULL = range(4)     # modality type embeddings of memory tokens
AGE_SLACK = 1e-3                               # s: frames this much older than window.adaptation still count
STIMULUS_BASES = 6                             # raised cosines over the time since a frame's onset
OWN_HISTORY_BINS, COUNT_CAP = 2, 3              # a unit's own-history state: its capped counts in 2 bins before
OWN_HISTORY_STATES = (COUNT_CAP + 1) ** OWN_HISTORY_BINS
GLM_FILTERS = ("coupling", "stim_features", "stim_space", "stim_time", "behavior_filter")   # point process


class Neuroformer(nn.Module):
    def __init__(self, cfg, vocab_size, frame_shape=None, behavior_stats=None, unit_log_rates=None):
        super().__init__()
        self.cfg = cfg
        m, w = cfg.model, cfg.model.width
        self.n_dt = int(round(cfg.window.current / cfg.window.dt_res)) + 1
        self.end_class = self.n_dt
        block = dict(heads=m.heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout)

        self.unit_emb = nn.Embedding(vocab_size, w)
        self.type_emb = nn.Embedding(4, w)
        self.null = nn.Parameter(torch.zeros(1, 1, w))
        self.history = stack(m.history_layers, w, name="history", **block)
        if m.latents:            # Perceiver-style: latents read the spikes once, then attend among themselves
            self.latent_init = nn.Parameter(torch.zeros(m.latents, w))
            self.latent_read = Block(w, cross=True, name="latents", self_attend=False, **block)
            span = max(cfg.window.history, cfg.window.dt_res)
            self.register_buffer("latent_time", -span * (torch.arange(m.latents) + 0.5) / m.latents, persistent=False)

        self.uses_frames = cfg.window.frames > 0
        if self.uses_frames:
            self.backbone = make_backbone(m.backbone, frame_shape)
            n_pos = self.backbone.grid[0] * self.backbone.grid[1]
            self.visual_in = nn.Linear(self.backbone.channels, w)
            self.visual_pos = nn.Parameter(torch.zeros(n_pos, w))     # learned, on top of a fixed 2-D code
            self.register_buffer("visual_grid_code", _grid_code(self.backbone.grid, w), persistent=False)
            self.visual = stack(m.visual_layers, w, name="visual", **block)

        self.inputs, self.targets = cfg.variables(predict=False), cfg.variables(predict=True)
        names = self.inputs + self.targets
        self.var_index = {n: i for i, n in enumerate(names)}
        self.var_emb = nn.Embedding(max(1, len(names)), w)
        stats = torch.as_tensor(behavior_stats if behavior_stats is not None else [[0.0, 1.0]] * len(names),
                                dtype=torch.float32).view(-1, 2)
        self.register_buffer("behavior_stats", stats)           # (mean, std) per variable, from training data
        self.value_in = nn.Linear(1, w)
        channels = cfg.channels()
        self.channel_offset = {n: sum(channels[m] for m in self.inputs[:k] if channels[m] > 1)
                               for k, n in enumerate(self.inputs) if channels[n] > 1}
        if self.channel_offset:
            self.channel_emb = nn.Embedding(sum(c for c in channels.values() if c > 1), w)
        self.behavior = stack(m.behavior_layers if self.inputs else 0, w, name="behavior", **block)
        self.behavior_norm = nn.LayerNorm(w)    # raw value tokens (no behaviour layers) at the scale of encoded ones
        if cfg.window.calcium > 0:   # calcium tokens (ROI's unit embedding + projected ΔF/F) read into latents
            self.calcium_value = nn.Linear(1, w)
            self.calcium_init = nn.Parameter(torch.zeros(m.calcium_latents, w))
            self.calcium_read = Block(w, cross=True, name="calcium", self_attend=False, **block)
            span, n = cfg.window.calcium, m.calcium_latents           # latents spread over the traces' span
            self.register_buffer("calcium_time", cfg.window.current - span * (torch.arange(n) + 0.5) / n,
                                 persistent=False)

        self.decoder = stack(m.decoder_layers, w, name="decoder", cross=True, **block)
        self.norm = nn.LayerNorm(w)
        self.point_process = m.point_process
        # point process: a log-multiplier of the hazard per gap (END is what survives); else logits
        self.dt_head = nn.Linear(w, self.n_dt if self.point_process else self.n_dt + 1)
        self.dt_emb = nn.Embedding(self.n_dt + 1, w)
        self.unit_head = nn.Linear(w, vocab_size)
        # one output query per unit reads its own drive out of the memory (a receptive field in
        # the visual tokens, its inputs in the history): a bias on that unit's logit (point
        # process: the level and slope of its log rate over the window)
        self.unit_readout = Block(w, cross=True, name="units", self_attend=False, **block)
        self.unit_drive_out = nn.Linear(w, 2 if self.point_process else 1)
        if self.point_process:
            lags = int(round(m.coupling_lag / cfg.window.dt_res))
            self.register_buffer("lag_bases", torch.tensor(raised_cosines(m.coupling_bases, 1, lags),
                                                            dtype=torch.float32), persistent=False)  # (nb, lags + 1)
            self.coupling = nn.Parameter(torch.zeros(m.coupling_bases, vocab_size, vocab_size))  # [basis, source, target]
            rates = torch.full((vocab_size,), math.log(5.0 * cfg.window.dt_res))        # 5 Hz unless told
            if unit_log_rates is not None:
                rates = torch.as_tensor(unit_log_rates, dtype=torch.float32)
            self.log_rate0 = nn.Parameter(rates.clone())            # log expected count per dt_res bin
            if m.stimulus_features:          # the GLM's stimulus filter: space (per patch feature) x time
                P = self.backbone.grid[0] * self.backbone.grid[1]
                self.stim_features = nn.Linear(self.backbone.channels, m.stimulus_features)
                self.stim_space = nn.Parameter(torch.zeros(vocab_size, P, m.stimulus_features))
                self.stim_time = nn.Parameter(torch.full((vocab_size, STIMULUS_BASES), 0.1))
                lags = int(round(cfg.window.frames / cfg.window.dt_res))
                self.register_buffer("onset_bases", torch.tensor(raised_cosines(STIMULUS_BASES, 0, lags),
                                                                 dtype=torch.float32), persistent=False)
                if cfg.window.adaptation:    # the filter output's mean and log s.d. before a presentation
                    self.stim_prior = nn.Parameter(torch.zeros(2, vocab_size))
            if self.inputs:                  # the GLM's behaviour filter: a weight per unit and input channel
                self.behavior_filter = nn.Parameter(torch.zeros(sum(channels[n] for n in self.inputs), vocab_size))
            not_unit = torch.zeros(vocab_size)
            not_unit[:len(SPECIALS)] = -1e4                         # padding and START never fire
            self.register_buffer("not_unit", not_unit, persistent=False)

        objectives = {n: v for mod in cfg.modalities.values() for n, v in mod.variables.items()}
        self.objectives = {n: objectives[n].objective for n in self.targets}
        self.frame_blind = [n for n in self.targets if not objectives[n].reads_frames] if self.uses_frames else []
        if self.targets:
            self.query = Block(w, cross=True, name="query", **block)
            # no norm on the way in: the magnitude is the count; a hidden layer reads the binned
            # counts nonlinearly (gaze shows in which units fire when, not in a linear sum)
            self.population_in = nn.Sequential(nn.Linear(self.population_bins * w, 2 * w), nn.GELU(),
                                               nn.Linear(2 * w, w))
            self.readout = nn.ModuleList(nn.Linear(w, objectives[n].n_classes or 1) for n in self.targets)
        # a Wiener filter inside the model: each regression target's linear read-out of the binned
        # counts, fitted in closed form on the training split before training (`fit_wiener`) and
        # then fixed, so decoding starts where ridge regression ends and the rest learns what it misses.
        # A target whose cross-validated score is higher that way reads innovations instead of counts:
        # each count minus the count its unit's own last bins predict (`wiener_own_history`)
        self.wiener_targets = [n for n in self.targets if self.objectives[n] == "regression"] if m.wiener else []
        if self.wiener_targets:
            self.register_buffer("wiener_weight", torch.zeros(self.population_bins * vocab_size, len(self.wiener_targets)))
            self.register_buffer("wiener_bias", torch.zeros(len(self.wiener_targets)))
            self.register_buffer("wiener_innovation", torch.zeros(len(self.wiener_targets)))     # 1: reads innovations
            self.register_buffer("wiener_own_history", torch.zeros(vocab_size, OWN_HISTORY_STATES))

        c = m.contrastive_dim or w
        self.proj_neural, self.proj_visual = nn.Linear(w, c), nn.Linear(w, c)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.apply(_init)
        if self.point_process:    # zero corrections: training starts from the GLM inside the model
            for head in (self.dt_head, self.unit_head, self.unit_drive_out):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    # ------------------------------------------------------------------ context

    def context_parts(self, batch, stimulus=None):
        """Encoded context by kind ("history", "visual", "behavior"): (tokens, times, mask) each,
        and the pooled visual features (None without frames). `stimulus`: the frames' and
        behaviour's parts when already encoded (`stimulus_parts`; generation encodes those of a
        trial window once for all its repeats)."""
        parts = {"history": self.encode_history(batch["history"]),
                 **(stimulus if stimulus is not None else self.stimulus_parts(batch))}
        return parts, (_masked_mean(parts["visual"][0], parts["visual"][2]) if self.uses_frames else None)

    def stimulus_parts(self, batch):
        """The "visual" and "behavior" parts of `context_parts`: what the recording, not the spikes, gives."""
        parts = {}
        if self.uses_frames:
            parts["visual"] = self.encode_frames(batch["frames"])
        if self.inputs:
            parts["behavior"] = self.encode_behavior(batch)
        return parts

    def encode_frames(self, fr):
        """Visual tokens (tokens, times, mask) of the window's frames {pixels or features, time, mask}."""
        B = len(fr["mask"])
        if "features" in fr:
            feats = fr["features"]                                                      # (B, F, P, C)
        elif fr["pixels"].shape[1]:
            feats = self.backbone(fr["pixels"])
        else:                                                  # no window of the batch shows a frame
            feats = fr["pixels"].new_zeros(B, 0, self.visual_pos.shape[0], self.backbone.channels)
        feats = feats.to(self.visual_in.weight.dtype)
        _, F_, P, _ = feats.shape
        v = self.visual_in(feats) + self.visual_grid_code + self.visual_pos + self.type_emb.weight[VISUAL]
        v = v.reshape(B, F_ * P, v.shape[-1])
        v_time = fr["time"].repeat_interleave(P, dim=1)
        v_mask = fr["mask"].repeat_interleave(P, dim=1)
        return run_stack(self.visual, v, v_time, v_mask), v_time, v_mask

    def encode_behavior(self, batch):
        """Behaviour tokens (tokens, times, mask) of the input variables' samples in the window."""
        toks, times, masks = [], [], []
        for name in self.inputs:
            b, z = batch[f"behavior.{name}"], self.standardised(batch, name)
            tok = self.value_in(z.unsqueeze(-1)) + self.var_emb.weight[self.var_index[name]] + self.type_emb.weight[BEHAVIOR]
            time, mask = b["time"], b["mask"]
            if name in self.channel_offset:            # (B, n, C, W): a token per sample and channel
                C = z.shape[-1]
                tok = (tok + self.channel_emb.weight[self.channel_offset[name]:][:C]).flatten(1, 2)
                time, mask = time.repeat_interleave(C, 1), mask.repeat_interleave(C, 1)
            toks.append(tok)
            times.append(time)
            masks.append(mask)
        x, t, mk = torch.cat(toks, 1), torch.cat(times, 1), torch.cat(masks, 1)
        return self.behavior_norm(run_stack(self.behavior, x, t, mk)), t, mk

    def standardised(self, batch, name):
        """Samples of behaviour variable `name` in the window, z-scored by the training statistics:
        (B, n) or (B, n, C)."""
        i = self.var_index[name]
        return (batch[f"behavior.{name}"]["value"].to(self.value_in.weight.dtype) - self.behavior_stats[i, 0]) \
            / self.behavior_stats[i, 1]

    def encode_history(self, hist):
        """History spikes as memory (tokens, times, mask): one token per spike, or with `latents`
        the latent tokens after they read every spike (cost linear in the spike count; the result
        does not depend on the order of the spike tokens)."""
        if not self.cfg.model.latents:
            h = self.unit_emb(hist["unit"]) + self.type_emb.weight[HISTORY]
            return run_stack(self.history, h, hist["time"], hist["mask"]), hist["time"], hist["mask"]
        B = len(hist["unit"])
        z = (self.latent_init + self.type_emb.weight[HISTORY]).expand(B, -1, -1)     # (B, N, W)
        t = self.latent_time.expand(B, -1)
        mask = torch.ones(t.shape, dtype=torch.bool, device=t.device)
        if hist["unit"].shape[1]:                   # a spike token is its unit's row: keys projected per unit
            table = self.unit_emb.weight + self.type_emb.weight[HISTORY]                # (V, W)
            z = self.latent_read(z, t, mask, memory=(table, hist["time"], hist["mask"], hist["unit"]))
        return run_stack(self.history, z, t, mask), t, mask

    def encode_calcium(self, calcium):
        """Calcium tokens {unit, time, value, mask} (a token per ROI and imaging frame) as memory
        (tokens, times, mask) of `model.calcium_latents` latent tokens that read them all (the
        POYO+ way: cost linear in ROIs x frames)."""
        B = len(calcium["unit"])
        z = self.calcium_init.expand(B, -1, -1)                                   # (B, N, W)
        t = self.calcium_time.expand(B, -1)
        mask = torch.ones(t.shape, dtype=torch.bool, device=t.device)
        if calcium["unit"].shape[1]:
            value = calcium["value"].to(self.calcium_value.weight.dtype).unsqueeze(-1)
            tokens = self.unit_emb(calcium["unit"]) + self.calcium_value(value)  # (B, frames x ROIs, W)
            z = self.calcium_read(z, t, mask, memory=(tokens, calcium["time"], calcium["mask"]))
        return z, t, mask

    def encode_context(self, batch, parts=None):
        """Memory (tokens, times, mask) of history, frames and input behaviour, plus pooled visual;
        from `context_parts(batch)`, or its result when given."""
        parts, pooled_visual = parts or self.context_parts(batch)
        B = len(batch["history"]["unit"])
        null = (self.null + self.type_emb.weight[NULL]).expand(B, 1, -1)          # never an empty memory
        zeros = torch.zeros(B, 1, device=null.device)
        parts = [*parts.values(), (null, zeros, torch.ones(B, 1, dtype=torch.bool, device=null.device))]
        tokens, times, mask = (torch.cat(p, 1) for p in zip(*parts))
        return (tokens, times, mask), pooled_visual

    # ------------------------------------------------------------------ decoder and heads

    def decode(self, current, memory):
        """Decoder states (B, L, W) of the current tokens {unit, time, mask}."""
        x = self.unit_emb(current["unit"])
        t = self.decoder[0].rotary.angles(current["time"])           # once for every layer
        for blk in self.decoder:
            x = blk(x, t, current["mask"], causal=True, memory=memory)
        return self.norm(x)

    def cross_keys(self, tokens, times):
        """The decoder's cross-attention keys and values of memory tokens (B, M, W) at `times`,
        stacked (layers, 2, B, H, M, D): token by token, so a memory's are its parts' side by side."""
        return torch.stack([torch.stack(blk.cross.memory_kv(tokens, times)) for blk in self.decoder])

    def stimulus_keys(self, stimulus):
        """The `cross_keys` of each kind of `stimulus_parts`' tokens (the frames', the behaviour's),
        in memory order: what `start_caches` can be given."""
        return {kind: self.cross_keys(tokens, times) for kind, (tokens, times, _) in stimulus.items()}

    def start_caches(self, caches, rows, memory, stimulus_keys=None):
        """Rows `rows` of the decoder's caches (`nn.new_caches`) start a window: no tokens yet,
        and the memory (tokens, times, mask) of those rows (n, M, W) as cross-attention keys.
        `stimulus_keys`: those of the memory's frames and behaviour (`stimulus_keys`; after its
        history, before its null token) when known (generation computes them once per trial
        window for all its repeats); then only the history's and null token's are computed."""
        tokens, times, mask = memory
        own, held, _ = caches
        own.clear(rows)
        if not stimulus_keys:                             # layer by layer: no stacked copy before `put` copies
            keys = (blk.cross.memory_kv(tokens, times) for blk in self.decoder)
        else:
            n = tokens.shape[1] - sum(k.shape[4] for k in stimulus_keys.values()) - 1      # history tokens
            rest = self.cross_keys(torch.cat([tokens[:, :n], tokens[:, -1:]], 1), torch.cat([times[:, :n], times[:, -1:]], 1))
            keys = torch.cat([rest[..., :n, :], *stimulus_keys.values(), rest[..., n:, :]], 4)
        for (k, v), cache in zip(keys, held):
            cache.put(rows, k, v, mask)

    def decode_step(self, unit, rotation, caches):
        """Decoder state (B, W) of one new token per row, unit (B,) at the time whose rotary
        embedding is `rotation` (B, D, D; `RotaryTime.matrix`), after the row's tokens and memory
        in `caches`: `decode`'s state at that token, in fewer operations (generation)."""
        x = F.embedding(unit, self.unit_emb.weight)
        own, held, weights = caches
        own.advance()
        for layer, (blk, cache, laid) in enumerate(zip(self.decoder, held, weights)):
            x = blk.step(x, rotation, own, layer, cache, laid)
        return self.norm(x)

    def unit_drive(self, memory):
        """Each unit's drive (B, 1 or 2, V): its own output query reads the memory once per window
        (point process: level and slope over the window). The queries are the same for every row,
        so projected once; outside training (no dropout) the read-out's last layer and
        `unit_drive_out` are applied as one, out(x + down(h)) = out(x) + (out·down)(h): a product
        of 1 or 2 outputs per unit instead of the width's."""
        V, blk, out = self.unit_emb.num_embeddings, self.unit_readout, self.unit_drive_out
        q = self.unit_emb.weight[None]                                                  # (1, V, W)
        q_time = torch.full((1, V), self.cfg.window.current / 2, device=q.device)
        mask = torch.ones(1, V, dtype=torch.bool, device=q.device)
        if self.training:
            drive = out(blk(q, q_time, mask, memory=memory))
        else:
            x = blk.attend(q, q_time, mask, memory=memory)                                # (B, V, W)
            up, act, down = blk.mlp[:3]
            drive = out(x) + F.linear(act(up(blk.norm3(x))), out.weight @ down.weight, out.weight @ down.bias)
        return self.bounded(drive.transpose(1, 2))

    def bounded(self, log_rate_term, bound=None):
        """A term of the point process's log rate softly bounded to ±`bound` nats (default
        `model.correction_bound`, for the transformer's corrections; 0: unbounded); unchanged
        without the point process, whose heads are logits, not log rates. See the config."""
        bound = self.cfg.model.correction_bound if bound is None else bound
        return bound * torch.tanh(log_rate_term / bound) if bound and self.point_process else log_rate_term

    def unit_bias(self, context, current, memory, drive=None, fixed=None):
        """What each unit's logit starts from: (B, 1, V) its drive, or with `point_process` (B, n_bins, V)
        its log expected count in every dt_res bin of the window: `window_bias` + coupling
        filters over all spikes in earlier bins (the `context` batch's history and `current`, lag
        >= 1 bin). `drive`: `unit_drive(memory)`, `fixed`: `window_bias` (without the point
        process: the drive), when already computed."""
        if fixed is None:
            drive = self.unit_drive(memory) if drive is None else drive
            fixed = self.window_bias(context, drive) if self.point_process else drive
        if not self.point_process:
            return fixed
        return self.coupled(fixed, self.coupling_input(context, current))

    def coupled(self, fixed, term):
        """`fixed` (B, n_bins, V) plus the coupling `term` (`coupling_input`) bounded (point process)."""
        return fixed + self.bounded(term.to(fixed.dtype), self.cfg.model.coupling_bound)

    def coupling_input(self, context, current=None):
        """Each unit's coupling term before its bound (B, n_bins, V): the coupling filters summed
        over every spike in earlier bins (the `context` batch's history and `current` without its
        START; lag >= 1 bin)."""
        spikes = [context["history"]] + ([{k: current[k][:, 1:] for k in ("unit", "time", "mask")}] if current else [])
        n, lags = self.n_dt - 1, self.lag_bases.shape[1] - 1
        B, V = len(spikes[0]["unit"]), self.coupling.shape[1]
        units = torch.cat([s["unit"] for s in spikes], 1)
        k = torch.cat([s["time"] for s in spikes], 1).div(self.cfg.window.dt_res).round().long() + lags
        keep = torch.cat([s["mask"] for s in spikes], 1) & (k >= 0) & (k < lags + n)
        counts = self.coupling.new_zeros(B, (lags + n) * V)
        counts.scatter_add_(1, (k.clamp(0, lags + n - 1) * V + units), keep.to(counts.dtype))
        counts = counts.view(B, lags + n, V).transpose(1, 2).reshape(B * V, 1, lags + n)
        filtered = F.conv1d(counts, self.lag_bases.flip(-1)[:, None].to(counts.dtype))     # (B V, nb, n)
        return torch.einsum("bjkt,kji->bti", filtered.view(B, V, -1, n), self.coupling)

    def spike_coupling(self, units, bins):
        """What one spike per row, of unit `units` (R,) in window bin `bins` (R,), adds to
        `coupling_input` (R, n_bins, V): generation updates it spike by spike."""
        n, lags = self.n_dt - 1, self.lag_bases.shape[1] - 1
        kernel = torch.einsum("kl,kri->rli", self.lag_bases.to(self.coupling.dtype), self.coupling[:, units])
        lag = torch.arange(n, device=bins.device) - bins[:, None]                           # (R, n)
        placed = kernel.gather(1, lag.clamp(0, lags)[..., None].expand(-1, -1, kernel.shape[2]))
        return placed.masked_fill(((lag < 0) | (lag > lags))[..., None], 0.0)

    def window_bias(self, context, drive):
        """The part of each unit's log expected count per bin (B, n_bins, V) that the window's
        spikes do not change: baseline + drive (level and slope over the window) + the
        behaviour and stimulus filters (point process)."""
        n = self.n_dt - 1
        when = ((torch.arange(n, device=drive.device) + 0.5) / n - 0.5)[:, None]       # (n, 1), window = 1
        out = self.log_rate0 + self.not_unit + drive[:, :1] + when * drive[:, 1:]
        if self.inputs:
            out = out + self.behavior_drive(context)
        return out + self.stimulus_drive(context, n) if self.cfg.model.stimulus_features else out

    def behavior_drive(self, batch):
        """Each unit's linear behaviour drive (B, 1, V): its weights on the window's mean z-scored
        value of every input variable (and channel)."""
        means = []
        for name in self.inputs:
            z, mask = self.standardised(batch, name), batch[f"behavior.{name}"]["mask"]
            z = z if z.dim() == 3 else z[..., None]                                       # (B, n, C)
            means.append((z * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
        return (torch.cat(means, 1) @ self.behavior_filter)[:, None]

    def stimulus_drive(self, context, n):
        """Each unit's linear stimulus drive (B, n, V) in the window's bins: per frame, its spatial map
        over shared patch features (with `window.adaptation`, standardised by its running
        statistics, `adapted`); over time, its filter of the time since the frame's onset."""
        frames = context["frames"]
        if frames["mask"].shape[1] == 0:                        # no window of the batch shows a frame
            return self.stim_time.new_zeros(len(frames["mask"]), n, self.stim_time.shape[0])
        with torch.autocast(self.stim_space.device.type, enabled=False):    # standardising magnifies rounding
            per_frame = self.filtered(frames)                                                   # (B, F, V)
            if self.cfg.window.adaptation:
                per_frame = self.adapted(per_frame, frames, context["adapt"])
        dt = self.cfg.window.dt_res
        lag = ((torch.arange(n, device=per_frame.device) + 0.5) * dt)[None, :, None] - frames["time"][:, None]
        k = lag.div(dt).floor().long()                                                          # (B, n, F)
        seen = frames["mask"][:, None] & (k >= 0) & (k < self.onset_bases.shape[1])
        basis = self.onset_bases.T[k.clamp(0, self.onset_bases.shape[1] - 1)] * seen[..., None]  # (B, n, F, nb)
        return torch.einsum("btfk,vk,bfv->btv", basis, self.stim_time, per_frame)

    def filtered(self, frames):
        """The stimulus filter's output (B, F, V) on each frame: its spatial map over the patch features."""
        feats = frames["features"] if "features" in frames else self.backbone(frames["pixels"])   # (B, F, P, C)
        return torch.einsum("bfpk,vpk->bfv", self.stim_features(feats.to(self.stim_space.dtype)), self.stim_space)

    def adapted(self, drive, frames, adapt):
        """The stimulus filter's output `drive` (B, F, V) on the window's `frames`, each standardised
        by the running mean and s.d. of the filter's output over the `adapt` frames
        (`ADAPTATION_RATE` a second) of the same presentation in the `window.adaptation` s up to
        it (contrast adaptation: a new movie's drive is judged against that movie so far). Frames
        weigh the time they stand for times exp(-age / tau), tau = half of `window.adaptation`,
        and the learned statistics before a presentation (`stim_prior`) weigh tau seconds."""
        span = self.cfg.window.adaptation
        tau = span / 2
        past = self.filtered(adapt) if adapt["mask"].shape[1] else drive[:, :0]                 # (B, F', V)
        age = frames["time"][:, :, None] - adapt["time"][:, None, :]                             # (B, F, F')
        same = frames["presentation"][:, :, None] == adapt["presentation"][:, None, :]
        within = (age >= 0) & (age < span + AGE_SLACK)          # the slack: float32 times of frames on a grid
        weight = torch.exp(-age.clamp(min=0) / tau) * adapt["duration"][:, None, :]
        weight = (weight * (same & within & adapt["mask"][:, None, :])).to(drive.dtype)
        prior_mean, prior_sd = self.stim_prior[0], self.stim_prior[1].exp()
        centred = past - prior_mean                       # moments about the prior mean: less cancellation
        total = tau + weight.sum(-1, keepdim=True)                                               # (B, F, 1) s
        mean = (weight @ centred) / total                                                        # (B, F, V)
        second = (tau * prior_sd ** 2 + weight @ centred ** 2) / total
        sd = (second - mean ** 2).clamp(min=tau * prior_sd ** 2 / total).sqrt()    # the prior's share at least
        return (drive - prior_mean - mean) / sd

    def heads(self, x, bias, dt, bins, units):
        """`gap_log_probs` and `unit_logits` at positions with states x (B, L, W), on grid bins
        `bins` (B, L) after tokens `units` (B, L), the unit given gap `dt` (teacher-forced or sampled)."""
        return self.gap_log_probs(x, bias, bins, units), self.unit_logits(x, bias, dt, bins, units)

    def gap_log_probs(self, x, bias, bins, units):
        """Log-probabilities of the gap classes and END (B, L, n_dt + 1) after tokens `units`;
        gaps that would leave the window are at -inf.

        Point process: the hazard of a gap d >= 1 (the first spike of bin τ) is
        Λ(τ) = Σ_i exp(bias_i(τ)); of gap 0 after unit u (tokens of one bin come in unit order),
        Σ_{i >= u} exp(bias_i); each times exp(dt_head) per gap, and
        p(Δ = d) = exp(-Σ_{d' < d} Λ_d') (1 - exp(-Λ_d)); END is surviving to the window's end.
        Only bins up to the gap that followed enter, so teacher forcing with rates from the
        recorded spikes is the model's exact likelihood."""
        n, gaps = self.n_dt - 1, torch.arange(self.n_dt, device=bins.device)
        leaves = bins[..., None] + gaps >= n                                             # (B, L, n_dt)
        if not self.point_process:
            logits = self.dt_head(x).float()
            logits = torch.cat([logits[..., :-1].masked_fill(leaves, float("-inf")), logits[..., -1:]], -1)
            return logits.log_softmax(-1)
        total = bias.float().logsumexp(-1)                                               # (B, n) log Λ per bin
        log_hazard = total.gather(1, (bins[..., None] + gaps).clamp(max=n - 1).flatten(1)).view(leaves.shape)
        here = bias.float().gather(1, bins.clamp(max=n - 1)[..., None].expand(-1, -1, bias.shape[2]))   # (B, L, V)
        vocab = torch.arange(here.shape[-1], device=units.device)
        from_unit = here.masked_fill(vocab < units[..., None], float("-inf")).logsumexp(-1)          # Σ_{i >= u}
        log_hazard = torch.cat([from_unit[..., None], log_hazard[..., 1:]], -1)
        if x is not None:
            log_hazard = log_hazard + self.bounded(self.dt_head(x).float())
        hazard = log_hazard.clamp(max=15).exp().masked_fill(leaves, 0.0)
        before = hazard.cumsum(-1) - hazard
        log_p = (torch.log(-torch.expm1(-hazard.clamp(min=1e-12))) - before).masked_fill(leaves, float("-inf"))
        return torch.cat([log_p, -hazard.sum(-1, keepdim=True)], -1)

    def unit_logits(self, x, bias, dt, bins, units):
        """Logits of the unit (B, L, V) given gap `dt` (B, L) after tokens `units`: the decoder's,
        plus the unit's bias in the bin the spike falls in; at gap 0 units before the last one
        are impossible (tokens of one bin come in unit order)."""
        if bias.shape[1] > 1:
            at = (bins + dt).clamp(0, bias.shape[1] - 1)
            bias = bias.gather(1, at[..., None].expand(-1, -1, bias.shape[2]))
        logits = bias.expand(*units.shape, bias.shape[-1])
        if x is not None:
            logits = logits + self.bounded(self.unit_head(x + self.dt_emb(dt)))
        vocab = torch.arange(logits.shape[-1], device=units.device)
        return logits.masked_fill((dt == 0)[..., None] & (vocab < units[..., None]), float("-inf"))

    def spike_outputs(self, batch, memory, x, current=None, drive=None):
        """Teacher-forced `heads` at every position of the current window (or of `current`)."""
        current = current if current is not None else batch["current"]
        bias = self.unit_bias(batch, current, memory, drive)
        return self.heads(x, bias, current["dt_target"].clamp(min=0), self.position_bins(current), current["unit"])

    def position_bins(self, current):
        """Grid bin of every current token (B, L), START at 0."""
        return current["time"].div(self.cfg.window.dt_res).round().long()

    def forward(self, batch, glm_only=False):
        """Losses and summed metrics of a batch (see `metrics_from_sums`). `glm_only` (point process):
        the spike loss of the GLM inside the model alone, the transformer not run (`train.glm_steps`)."""
        cur = batch["current"]
        if self.training and self.uses_frames and self.cfg.model.frame_dropout > 0:
            shown = torch.rand(len(cur["unit"]), 1, device=cur["unit"].device) >= self.cfg.model.frame_dropout
            batch = {**batch, **{key: {**batch[key], "mask": batch[key]["mask"] & shown}
                                 for key in ("frames", "adapt") if key in batch}}
        if glm_only:
            x = memory = None
            drive = self.log_rate0.new_zeros(len(cur["unit"]), 2, len(self.log_rate0))
        else:
            context = self.context_parts(batch)
            (memory, pooled_visual), drive = self.encode_context(batch, context), None
            x = self.decode(cur, memory)
        dt_target, unit_target = cur["dt_target"], cur["unit_target"]
        gap_log_p, unit_logits = self.spike_outputs(batch, memory, x, drive=drive)
        dt_nll = F.nll_loss(gap_log_p.flatten(0, 1), dt_target.flatten(), ignore_index=IGNORE, reduction="sum")
        unit_nll = F.cross_entropy(unit_logits.flatten(0, 1), unit_target.flatten(), ignore_index=IGNORE,
                                   reduction="sum")
        n_targets = (dt_target != IGNORE).sum()
        loss_spikes = (dt_nll + unit_nll) / n_targets.clamp(min=1)
        is_unit, is_end = unit_target != IGNORE, dt_target == self.end_class
        out = {
            "nll_sum": (dt_nll + unit_nll).detach(), "n_spikes": batch["n_spikes"].sum(),
            "unit_correct": ((unit_logits.argmax(-1) == unit_target) & is_unit).sum(), "unit_count": is_unit.sum(),
            "end_correct": ((gap_log_p.argmax(-1) == self.end_class) & is_end).sum(), "end_count": is_end.sum(),
        }
        loss = self.cfg.loss.spikes * loss_spikes
        if self.point_process and self.cfg.loss.glm_l2:
            loss = loss + self.cfg.loss.glm_l2 * self.glm_penalty()

        if self.uses_frames and self.cfg.loss.contrastive > 0 and not glm_only:
            c_loss, correct, count = self.contrastive(x, cur["mask"], pooled_visual, batch["frames"])
            loss = loss + self.cfg.loss.contrastive * c_loss
            out.update(contrast_correct=correct, contrast_count=count, contrast_batch=torch.tensor(len(x)))

        if self.targets and not glm_only:
            b_loss, sums = self.behavior_loss(batch, self.behavior_outputs(batch, x, memory, context[0]))
            loss = loss + self.cfg.loss.behavior * b_loss
            out.update(sums)
        out["loss"] = loss
        return out

    # ------------------------------------------------------------------ auxiliary objectives

    def glm_penalty(self):
        """|w|^2 / 2 over the filters of the GLM inside a point-process model (not its baselines):
        the library GLM's ridge, per spike (`loss.glm_l2`)."""
        return sum((p ** 2).sum() for n, p in self.named_parameters() if n.split(".")[0] in GLM_FILTERS) / 2

    def contrastive(self, x, mask, pooled_visual, frames):
        """CLIP-style InfoNCE between pooled neural and pooled visual features, learned temperature.

        Other windows showing the same movie frame (repeated trials) are not negatives; windows
        without frames take no part.
        """
        key = (torch.where(frames["mask"], frames["index"], -1).max(1).values if frames["mask"].shape[1]
               else frames["mask"].new_full((len(x),), -1, dtype=torch.long))    # last frame shown; -1 none
        valid = key >= 0
        n = F.normalize(self.proj_neural(_masked_mean(x, mask)), dim=-1)[valid]
        v = F.normalize(self.proj_visual(pooled_visual), dim=-1)[valid]
        key = key[valid]
        if len(key) < 2:
            zero = (n.sum() + v.sum()) * 0                  # keeps both projections in the graph
            return zero, torch.tensor(0), torch.tensor(0)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * n @ v.T
        same = (key[:, None] == key[None, :]) & ~torch.eye(len(key), dtype=torch.bool, device=key.device)
        logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(len(key), device=key.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return loss, (logits.argmax(1) == labels).sum().detach(), torch.tensor(len(key))

    @property
    def population_bins(self):
        """Bins of one current-window length tiling history + current (the first may be partial)."""
        window = self.cfg.window
        return math.ceil((window.history + window.current) / window.current - 1e-6)

    def _population_spikes(self, batch):
        """Every spike of the window (history and current, without START): unit tokens, mask and
        population bin (B, S), bins of `current` seconds counted back from the window's end."""
        hist, cur = batch["history"], batch["current"]
        units = torch.cat([hist["unit"], cur["unit"][:, 1:]], 1)
        mask = torch.cat([hist["mask"], cur["mask"][:, 1:]], 1)
        time = torch.cat([hist["time"], cur["time"][:, 1:]], 1)
        n = self.population_bins
        return units, mask, (n - 1 + (time / self.cfg.window.current).floor().long()).clamp(0, n - 1)

    def population(self, batch):
        """The window's binned population vectors (B, bins, W): per population bin, the sum of the
        unit embeddings of its spikes per second. Attention averages, so it cannot count; rates are counts."""
        units, mask, index = self._population_spikes(batch)
        emb = self.unit_emb(units) * mask.unsqueeze(-1)
        out = emb.new_zeros(len(emb), self.population_bins, emb.shape[-1])
        return out.scatter_add_(1, index.unsqueeze(-1).expand_as(emb), emb) / self.cfg.window.current

    def binned_counts(self, batch):
        """Spike counts of every unit token in every population bin (B, bins * V): the Wiener filter's input."""
        units, mask, index = self._population_spikes(batch)
        V = self.unit_emb.num_embeddings
        out = torch.zeros(len(units), self.population_bins * V, device=units.device, dtype=self.unit_emb.weight.dtype)
        return out.scatter_add_(1, index * V + units, mask.to(out.dtype))

    def own_history_states(self, counts):
        """Each unit's own-history state in every population bin (B, bins, V) of counts (B, bins,
        V): its counts in the OWN_HISTORY_BINS bins before, capped at COUNT_CAP, as one index (the
        nearest bin most significant; bins before the window count as empty)."""
        capped = counts.clamp(max=COUNT_CAP).long()
        state = torch.zeros_like(capped)
        for lag in range(1, OWN_HISTORY_BINS + 1):
            state = state * (COUNT_CAP + 1) + F.pad(capped, (0, 0, lag, 0))[:, :-lag]
        return state

    def expected_counts(self, counts):
        """(B, bins * V): the count each unit's own-history state predicts in every population bin
        of counts (B, bins * V), read from `wiener_own_history`."""
        states = self.own_history_states(counts.view(len(counts), self.population_bins, -1))
        return self.wiener_own_history[torch.arange(states.shape[-1], device=states.device), states].flatten(1)

    def wiener(self, batch):
        """The Wiener filter's prediction (B, targets) of each regression target, standardised units;
        in full precision (its intercept cancels a large sum)."""
        with torch.autocast(self.wiener_weight.device.type, enabled=False):
            counts = self.binned_counts(batch).to(self.wiener_weight.dtype)
            # (counts - expected) @ weight where a target reads innovations (flag 1), counts @ weight elsewhere
            return (counts @ self.wiener_weight + self.wiener_bias
                    - self.expected_counts(counts) @ (self.wiener_weight * self.wiener_innovation))

    def behavior_outputs(self, batch, x, memory, parts):
        """POYO-style output queries at each target sample's timestamp, starting from the variable's
        embedding plus the window's population vector and reading the decoder states x of the
        current window and the memory (`encode_context` of `parts`, as `context_parts` gives them),
        and the calcium tokens' latents with `window.calcium` (only these heads see them, since the
        traces show the current window's spikes). A target in `frame_blind` reads the current
        window's spike tokens and the memory of `parts` without the visual tokens instead (x has
        read them): name -> (B, n, 1 or n_classes), standardised units."""
        cur = batch["current"]
        extra = [self.encode_calcium(batch["calcium"])] if self.cfg.window.calcium > 0 else []
        seeing = tuple(torch.cat(p, 1) for p in zip((x, cur["time"], cur["mask"]), memory, *extra))
        if self.frame_blind:
            blind_memory, _ = self.encode_context(batch, ({k: v for k, v in parts.items() if k != "visual"}, None))
            spikes = (self.unit_emb(cur["unit"]), cur["time"], cur["mask"])
            blind = tuple(torch.cat(p, 1) for p in zip(spikes, blind_memory, *extra))
        population = self.population_in(self.population(batch).flatten(1))[:, None]
        linear = self.wiener(batch)[:, None, :, None] if self.wiener_targets else None     # (B, 1, T, 1)
        outputs = {}
        for readout, name in zip(self.readout, self.targets):
            b = batch[f"behavior.{name}"]
            q = (self.var_emb.weight[self.var_index[name]] + population).expand(*b["value"].shape, -1)
            outputs[name] = readout(self.query(q, b["time"], b["mask"],
                                               memory=blind if name in self.frame_blind else seeing))
            if name in self.wiener_targets:
                outputs[name] = outputs[name] + linear[:, :, self.wiener_targets.index(name)]
        return outputs

    @torch.no_grad()
    def predict_wiener(self, batch):
        """The Wiener filter's own prediction of every sample of its targets: name -> (B, n), in
        the variable's units; the transformer's correction is what `predict_behavior` adds to it."""
        z = self.wiener(batch)                                                        # (B, targets)
        out = {}
        for k, name in enumerate(self.wiener_targets):
            mean, sd = self.behavior_stats[self.var_index[name]]
            out[name] = (z[:, k:k + 1].float() * sd + mean).expand_as(batch[f"behavior.{name}"]["value"])
        return out

    def behavior_loss(self, batch, outputs):
        """Mean squared error (standardised) or cross-entropy per target, averaged over targets."""
        loss, sums = 0.0, {}
        for name, y in outputs.items():
            b, i = batch[f"behavior.{name}"], self.var_index[name]
            if self.objectives[name] == "regression":
                z = (b["value"] - self.behavior_stats[i, 0]) / self.behavior_stats[i, 1]
                err = ((y.squeeze(-1) - z) ** 2)[b["mask"]]
            else:
                err = F.cross_entropy(y[b["mask"]], b["value"][b["mask"]].long(), reduction="none")
            loss = loss + err.mean() if len(err) else loss
            sums[f"behavior_err_sum.{name}"] = err.sum().detach()
            sums[f"behavior_count.{name}"] = torch.tensor(len(err))
        return loss / len(self.targets), sums

    @torch.no_grad()
    def predict_behavior(self, batch):
        """Decoded value of every target sample in the batch: name -> (B, n), in the variable's
        units (regression) or the most probable class (classification)."""
        context = self.context_parts(batch)
        memory, _ = self.encode_context(batch, context)
        x = self.decode(batch["current"], memory)
        out = {}
        for name, y in self.behavior_outputs(batch, x, memory, context[0]).items():
            i = self.var_index[name]
            out[name] = (y.squeeze(-1).float() * self.behavior_stats[i, 1] + self.behavior_stats[i, 0]
                         if self.objectives[name] == "regression" else y.argmax(-1))
        return out


def metrics_from_sums(sums):
    """Validation metrics from summed batch outputs: NLL per spike (nats), unit top-1 and END
    accuracy, contrastive retrieval top-1 (chance = 1 / batch), behaviour error per variable."""
    def ratio(a, b):
        return float(sums[a]) / max(float(sums[b]), 1.0) if a in sums else None

    out = {"nll_per_spike": ratio("nll_sum", "n_spikes"), "unit_accuracy": ratio("unit_correct", "unit_count"),
           "end_accuracy": ratio("end_correct", "end_count")}
    if "contrast_count" in sums:
        out["retrieval_top1"] = ratio("contrast_correct", "contrast_count")
    names = [key.split(".", 1)[1] for key in sums if key.startswith("behavior_err_sum.")]
    for name in names:
        out[f"behavior_error.{name}"] = ratio(f"behavior_err_sum.{name}", f"behavior_count.{name}")
    if names:                                           # mean over targets: what decoding runs select on
        out["behavior_error"] = sum(out[f"behavior_error.{n}"] for n in names) / len(names)
    return out


def _grid_code(grid, width):
    """Fixed 2-D sine-cosine code of patch positions (half the width for rows, half for columns),
    so that queries can find a place on the screen from the first step."""
    def code(n, dims):
        pos = torch.arange(n, dtype=torch.float32)[:, None]
        freq = torch.exp(-math.log(100.0) * torch.arange(0, dims, 2, dtype=torch.float32) / dims)
        return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], 1)[:, :dims]
    rows, cols = code(grid[0], width // 2), code(grid[1], width - width // 2)
    return torch.cat([rows[:, None].expand(-1, grid[1], -1), cols[None].expand(grid[0], -1, -1)], -1).reshape(-1, width)


def _masked_mean(x, mask):
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def _init(module):
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
