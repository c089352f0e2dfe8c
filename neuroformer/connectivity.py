"""Connectivity read out of a trained model, the baselines, and scoring against a true matrix.

Every matrix is (target unit, source unit): row i, column j says how much j drives i.

Attention (teacher-forced on recorded windows of a split, weights captured before dropout):
- `self_attention`: decoder self-attention. Position i predicts token i+1 (docs/design.md §2), so the
  row is the unit of the *next* spike; columns are the units of the attended current-window
  spikes (START excluded).
- `history_attention`: decoder cross-attention from the same rows to the history spikes.
- `readout_attention`: each unit's own drive query (the unit read-out) attending to the
  history spikes: one row per unit in every window, whether or not it fires.
- `stimulus_attention`: neuron x patch maps, the unit read-out's attention to the visual
  tokens, summed over frames; `input_attention`: neuron x channel, the same for a multichannel
  input signal (e.g. N periodic inputs).
Heads are averaged; layers are averaged (`combine="mean"`), or only the last is kept
("last"), or each weight a is replaced by relu(a * ∂ log p(recorded next units) / ∂a) and
then averaged ("grad": gradient-weighted attention, what attending there did for the
prediction of the spikes that followed).
Normalisation for firing counts: a query's weights are first renormalised over the keys of
one kind (current-window tokens with START, history spikes, or visual tokens); each weight's
chance level is one over the number of those keys; per (target, source) pair the summed
weights are divided by the summed chance levels. 1 means "attended as much as a uniform
query would", whatever the two units' rates; pairs never seen together get 1.

`perturbation` (a generative model's own measure): insert one spike of unit j at the start of
a recorded window (so it is in the past of every later prediction) and take the mean change of
log p(unit i | Δ) over the recorded spikes 1-20 ms later, teacher forced, averaged over windows.

Baselines: Pearson correlation of binned counts (10 ms), lagged cross-correlation on 1 ms bins
(source leading by 1-5 ms, summed), and the coupling weights of the library's Poisson GLM.
"""
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from .checkpoints import load_run
from .data.recording import check_split, open_recording, spike_counts
from .data.vocab import START
from .data.windows import IGNORE, collate_windows
from .errors import InputError
from .glm import GLMConfig, PoissonGLM
from .io import atomic_savez
from .nn import capture_attention
from .plots import connectivity_figure, stimulus_maps
from .provenance import as_text
from .training import tiling_batches, to_device


# ---------------------------------------------------------------------- attention

COMBINE = ("mean", "last", "grad")
EFFECT_LAGS = (0.001, 0.020)    # s after a source spike: the perturbation's window and the lag-limited couplings


class PairSums:
    """Summed attention and summed chance per (row unit, column unit)."""

    def __init__(self, n_rows, n_cols):
        self.weight = torch.zeros(n_rows, n_cols, dtype=torch.float64)
        self.chance = torch.zeros(n_rows, n_cols, dtype=torch.float64)

    def add(self, weights, allowed, row_unit, col_unit):
        """weights, allowed (B, Q, K); row_unit (B, Q), col_unit (B, K): unit index or -1 (skip)."""
        allowed = allowed.double()
        chance = allowed / allowed.sum(-1, keepdim=True).clamp(min=1)
        weights = weights.double() * allowed
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-30)      # share among these keys
        rows, cols = _one_hot(row_unit, self.weight.shape[0]), _one_hot(col_unit, self.weight.shape[1])
        self.weight += torch.einsum("bqv,bqk,bku->vu", rows, weights, cols)
        self.chance += torch.einsum("bqv,bqk,bku->vu", rows, chance, cols)

    def normalised(self):
        seen = self.chance > 0
        return torch.where(seen, self.weight / self.chance.clamp(min=1e-12), 1.0).numpy()


def _one_hot(index, n):
    valid = index >= 0
    return torch.nn.functional.one_hot(index.clamp(min=0), n).double() * valid[..., None]


def _combine(captured, names, combine):
    """Mean over heads, then the last layer or the mean over layers: (B, Q, K)."""
    maps = [captured[n].mean(1) for n in names]
    return maps[-1] if combine == "last" else torch.stack(maps).mean(0)


def _attention_maps(model, batch, combine):
    """Each attention module's (B, H, Q, K) weights on a teacher-forced batch, and the memory mask.

    With combine="grad" a weight a becomes relu(a * ∂ log p(recorded units) / ∂a): how much
    attending there raised the probability of the spikes that did follow."""
    grad = combine == "grad"
    with torch.set_grad_enabled(grad), capture_attention(keep_graph=grad) as cap:
        memory, _ = model.encode_context(batch)
        x = model.decode(batch["current"], memory)
        _, unit_logits = model.spike_outputs(batch, memory, x)            # (its unit read-out is captured too)
        maps = {name: w[0] for name, w in cap.items()}
        if grad:
            cur = batch["current"]
            log_p = -torch.nn.functional.cross_entropy(unit_logits.flatten(0, 1), cur["unit_target"].flatten(),
                                                       ignore_index=IGNORE, reduction="sum")
            grads = torch.autograd.grad(log_p, list(maps.values()), allow_unused=True)
            maps = {name: torch.zeros_like(w) if g is None else (w * g).clamp(min=0)
                    for (name, w), g in zip(maps.items(), grads)}
    return {name: w.detach().cpu() for name, w in maps.items()}, memory[2].detach().cpu()


def attention_connectivity(model, dataset, rid, batches, device="cpu", combine="mean", progress=True):
    """Attention matrices (see module docstring) over the windows in `batches`."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    tokens = dataset.unit_tokens[rid]
    n = len(tokens)
    unit_of = torch.full((len(dataset.vocab),), -1, dtype=torch.long)
    unit_of[torch.as_tensor(tokens)] = torch.arange(n)
    n_dec = len(model.decoder)
    sums = {k: PairSums(n, n) for k in ("self_attention", "history_attention", "readout_attention")}
    groups = {}
    model.eval()
    for idx in tqdm(batches, desc="attention", disable=not progress):
        batch = to_device(collate_windows([dataset[i] for i in idx]), device)
        cap, memory_mask = _attention_maps(model, batch, combine)
        cur, hist = batch["current"], batch["history"]
        target = unit_of[torch.where(cur["unit_target"].cpu() == IGNORE, START, cur["unit_target"].cpu())]
        cur_unit = unit_of[cur["unit"].cpu()]
        hist_unit = unit_of[hist["unit"].cpu()]
        cur_mask, hist_mask = cur["mask"].cpu(), hist["mask"].cpu()
        n_hist = hist_unit.shape[1]
        L = cur_mask.shape[1]
        latents = model.cfg.model.latents            # memory holds latents, not history spikes
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        allowed = causal & cur_mask[:, None, :]
        sums["self_attention"].add(_combine(cap, [f"decoder.{i}.self" for i in range(n_dec)], combine),
                                   allowed, target, cur_unit)
        cross = _combine(cap, [f"decoder.{i}.cross" for i in range(n_dec)], combine)
        if not latents:
            sums["history_attention"].add(cross[..., :n_hist], memory_mask[:, None, :n_hist].expand(-1, L, -1) &
                                          hist_mask[:, None], target, hist_unit)
        readout = cap["units.cross"].mean(1)                               # (B, vocab, M)
        rows = unit_of.expand(len(readout), -1)
        if not latents:
            sums["readout_attention"].add(readout[..., :n_hist], memory_mask[:, None, :n_hist].expand(
                -1, readout.shape[1], -1) & hist_mask[:, None], rows, hist_unit)
        for key, start, column, n_cols in _token_groups(model, batch, latents or n_hist):
            mask = memory_mask[:, start:start + len(column)]
            if key not in groups:
                groups[key] = PairSums(n, n_cols)
            groups[key].add(readout[..., start:start + len(column)], mask[:, None].expand(-1, readout.shape[1], -1),
                            rows, torch.where(mask, column, -1))
    if model.cfg.model.latents:              # no attention to history spikes to read
        del sums["history_attention"], sums["readout_attention"]
    out = {k: v.normalised() for k, v in (sums | groups).items()}
    if "stimulus_attention" in out:
        out["stimulus_attention"] = out["stimulus_attention"].reshape(n, *model.backbone.grid)
    return out


def _token_groups(model, batch, n_hist):
    """Memory tokens read per column: (key, first memory index, column of each token, columns) for the
    visual tokens (column = patch) and each multichannel input (column = channel)."""
    groups, start = [], n_hist
    if model.uses_frames:
        P = model.visual_pos.shape[0]
        count = batch["frames"]["mask"].shape[1] * P
        groups.append(("stimulus_attention", start, torch.arange(count).remainder(P), P))
        start += count
    multi = [name for name in model.inputs if name in model.channel_offset]
    for name in model.inputs:
        value = batch[f"behavior.{name}"]["value"]
        count = value.shape[1] * (value.shape[2] if value.dim() == 3 else 1)
        if name in model.channel_offset:
            key = "input_attention" if len(multi) == 1 else f"input_attention.{name}"
            groups.append((key, start, torch.arange(count).remainder(value.shape[2]), value.shape[2]))
        start += count
    return groups


# ---------------------------------------------------------------------- perturbation

def unit_log_probs(model, batch, current, tokens):
    """log p(unit | recorded Δ) of the units `tokens` at every position of `current` (B, L, n),
    with the context of `batch` (one window, shared by every row of `current`)."""
    memory, _ = model.encode_context(batch)
    drive = model.unit_drive(memory)
    fixed = model.window_bias(batch, drive) if model.point_process else drive      # once for the window
    rows = len(current["unit"])
    memory = tuple(m.expand(rows, *m.shape[1:]) for m in memory)
    history = {k: v.expand(rows, *v.shape[1:]) for k, v in batch["history"].items()}
    x = model.decode(current, memory)
    bias = model.unit_bias({"history": history}, current, memory, fixed=fixed.expand(rows, -1, -1))
    no_order = torch.zeros_like(current["unit"])        # every unit possible, also at gap 0 (the within-bin
    logits = model.unit_logits(x, bias, current["dt_target"].clamp(min=0), model.position_bins(current),
                               no_order)                 # order of tokens would forbid some there)
    return logits.log_softmax(-1)[..., tokens]


def _with_spike_at_start(current, tokens):
    """The window's tokens once per unit token in `tokens`, each with that unit's spike inserted
    at the window start (right after START): every later prediction has it in its past."""
    k = len(tokens)

    def insert(x, pos, value):
        x = x.expand(k, -1)
        return torch.cat([x[:, :pos], value.to(x.dtype).view(k, 1), x[:, pos:]], 1)
    zeros = torch.zeros(k, device=tokens.device)
    return {"unit": insert(current["unit"], 1, tokens), "time": insert(current["time"], 1, zeros),
            "dt_target": insert(current["dt_target"], 0, zeros), "unit_target": insert(current["unit_target"], 0, tokens),
            "mask": insert(current["mask"], 1, zeros + 1)}


@torch.no_grad()
def perturbation_connectivity(model, dataset, rid, batches, device="cpu", window=EFFECT_LAGS, chunk=256,
                              progress=True):
    """In-silico perturbation (target, source): one spike of unit j is inserted at the start of a
    recorded window, and the entry is the mean change of log p(unit i | Δ) over the recorded
    spikes that follow it by `window` s (teacher forced, so only that one spike differs)."""
    tokens = torch.as_tensor(dataset.unit_tokens[rid], device=device)
    n = len(tokens)
    effect, n_windows = torch.zeros(n, n, dtype=torch.float64), 0
    model.eval()
    for idx in tqdm(batches, desc="perturbation", disable=not progress):
        for i in idx:
            batch = to_device(collate_windows([dataset[i]]), device)
            cur = batch["current"]
            t_next = torch.cat([cur["time"][0, 1:], cur["time"].new_full((1,), float("inf"))])
            rows = torch.nonzero((cur["unit_target"][0] != IGNORE) & (t_next >= window[0]) & (t_next <= window[1]))[:, 0]
            if not len(rows):
                continue
            base = unit_log_probs(model, batch, cur, tokens)[0, rows]                       # (P, n)
            for a in range(0, n, chunk):
                src = tokens[a:a + chunk]
                lp = unit_log_probs(model, batch, _with_spike_at_start(cur, src), tokens)[:, rows + 1]
                effect[:, a:a + len(src)] += (lp - base).mean(1).T.double().cpu()
            n_windows += 1
    return (effect / max(n_windows, 1)).numpy()


def model_connectivity(model, dataset, rid, split="test", windows=256, perturbation_windows=32, batch_size=32,
                       combine="mean", device="cpu", progress=True):
    """Attention matrices over up to `windows` windows tiling `split`, and the perturbation
    measure over `perturbation_windows` of them (0: skip)."""
    spec = dataset.spec
    batches = tiling_batches(dataset.recordings, spec, batch_size, max(1, windows // batch_size), split)
    if not batches:
        raise InputError(dataset.recordings._paths[rid], (f"{split}_domain", f"no full window of {spec.length:.3f} s"))
    out = attention_connectivity(model, dataset, rid, batches, device, combine, progress)
    if model.point_process:
        out["coupling"] = model_coupling(model, dataset.unit_tokens[rid])
        out["coupling (1-20 ms)"] = model_coupling(model, dataset.unit_tokens[rid], lags=EFFECT_LAGS)
    if perturbation_windows:
        flat = [i for b in batches for i in b]
        step = max(1, len(flat) // perturbation_windows)
        out["perturbation"] = perturbation_connectivity(model, dataset, rid, [flat[::step][:perturbation_windows]],
                                                        device, progress=progress)
    return out


def model_coupling(model, tokens, lags=None):
    """A point-process model's own coupling filters integrated over lags (log-rate change per
    source spike; over the `lags` (first, last) s window only, when given), (target, source)
    over the recording's unit `tokens`, diagonal 0: the GLM inside the model, read like the
    GLM's (`glm_coupling`)."""
    per_basis = model.coupling.detach().cpu().double()[:, tokens][:, :, tokens]     # (basis, source, target)
    weights = lag_sums(model.lag_bases.cpu().double().numpy(), model.cfg.window.dt_res, lags)
    out = torch.einsum("bst,b->ts", per_basis, torch.as_tensor(weights)).numpy()
    np.fill_diagonal(out, 0.0)
    return out


def lag_sums(kernel, bin_size, lags=None):
    """Each basis of `kernel` (bases, lag bins from 0) summed over all its lags, or over the
    bins of the `lags` (first, last) s window."""
    if lags is None:
        return kernel.sum(1)
    first, last = (int(round(t / bin_size)) for t in lags)
    return kernel[:, first:last + 1].sum(1)


# ---------------------------------------------------------------------- baselines

def _domain_pairs(domain):
    return list(zip(np.asarray(domain.start, dtype=float), np.asarray(domain.end, dtype=float)))


def pearson_connectivity(data, domain, bin_size=0.01):
    """Pearson correlation of binned counts over the intervals of `domain` (symmetric, diagonal 0)."""
    counts = np.concatenate([spike_counts(data, a, b, bin_size) for a, b in _domain_pairs(domain)]).astype(float)
    counts -= counts.mean(0)
    norm = np.sqrt((counts ** 2).sum(0))
    c = counts.T @ counts / np.maximum(np.outer(norm, norm), 1e-12)
    np.fill_diagonal(c, 0.0)
    return c


def lagged_correlation(data, domain, lags=(1, 2, 3, 4, 5), bin_size=0.001, chunk=20.0):
    """Σ over lags of corr(count_i(t + lag), count_j(t)) on `bin_size` bins: row i (target)
    follows column j (source). Computed in chunks of `chunk` s (memory stays small)."""
    n, m = len(data.units.id), max(lags)
    s1, s2, cross, total = np.zeros(n), np.zeros(n), np.zeros((len(lags), n, n)), 0
    for a, b in _domain_pairs(domain):
        for c0 in np.arange(a, b, chunk):
            x = spike_counts(data, c0, min(b, c0 + chunk), bin_size).astype(np.float32)
            if len(x) <= m:
                continue
            s1 += x[m:].sum(0)
            s2 += (x[m:] ** 2).sum(0)
            total += len(x) - m
            for k, lag in enumerate(lags):
                cross[k] += x[m:].T @ x[m - lag:len(x) - lag]
    mean = s1 / max(total, 1)
    std = np.sqrt(np.maximum(s2 / max(total, 1) - mean ** 2, 1e-12))
    corr = (cross / max(total, 1) - np.outer(mean, mean)) / np.outer(std, std)
    out = corr.sum(0)
    np.fill_diagonal(out, 0.0)
    return out


def glm_coupling(glm, lags=None):
    """The GLM's coupling kernels integrated over lags (over the `lags` (first, last) s window
    only, when given; log-rate change per source spike), in spike units (undoing the feature
    standardisation): (target, source), diagonal 0."""
    out = np.einsum("sbt,b->ts", glm.history_weights().numpy(), lag_sums(glm.hist_kernel, glm.cfg.bin, lags))
    np.fill_diagonal(out, 0.0)
    return out


# ---------------------------------------------------------------------- scoring

def score(measure, truth, signed):
    """Off-diagonal agreement with the true W: R² of a linear fit (signed measures against W,
    non-negative ones against |W|), Spearman correlation (same pairing), AUROC for telling
    true connections from absent ones (by |measure| for signed measures)."""
    off = ~np.eye(len(truth), dtype=bool)
    m, w = np.asarray(measure, float)[off], np.asarray(truth, float)[off]
    ref = w if signed else np.abs(w)
    r = np.corrcoef(m, ref)[0, 1] if m.std() > 0 else 0.0
    exists = w != 0
    auroc = roc_auc_score(exists, np.abs(m) if signed else m) if 0 < exists.sum() < len(w) else float("nan")
    return {"r2": float(r ** 2), "spearman": float(spearmanr(m, ref).statistic), "auroc": float(auroc)}


SIGNED = {"self_attention": False, "history_attention": False, "readout_attention": False,
          "perturbation": True, "coupling": True, "pearson": True, "lagged_correlation": True, "glm_coupling": True}


def scored(measure):
    """Whether a measure's name (e.g. "coupling (1-20 ms)", "self_attention (grad)") is scored
    against the true W, and as a signed one: (scored, signed)."""
    kind = measure.split(" ")[0]
    return kind in SIGNED, SIGNED.get(kind, False)


# ---------------------------------------------------------------------- the whole job

def extract_connectivity(run, data_path, out_path, split="test", windows=256, perturbation_windows=32,
                         combine="mean", baseline=None, device="cpu", progress=True):
    """Every measure on `split` of one recording, written to OUT (.npz, with the provenance of the
    run's config) with figures beside it; with a ground-truth file (REC.truth.npz, e.g. a
    synthetic circuit) each is scored against its `coupling`. Returns {"scores": ..., "figures": [...]}."""
    check_split(split)
    cfg, model, dataset, recordings, device = load_run(run, data_path, device)
    rid = recordings.recording_ids[0]
    data = open_recording(data_path)
    domain = getattr(data, f"{split}_domain")
    matrices = model_connectivity(model, dataset, rid, split, windows, perturbation_windows,
                                  cfg.train.batch_size, combine, device, progress)
    matrices["pearson"] = pearson_connectivity(data, domain)
    matrices["lagged_correlation"] = lagged_correlation(data, domain)
    if baseline == "glm":
        glm = PoissonGLM.fit(data_path, GLMConfig(gaze=dataset.spec.gaze), progress=progress)
        matrices["glm_coupling"], matrices["glm_coupling (1-20 ms)"] = glm_coupling(glm), glm_coupling(glm, EFFECT_LAGS)
    unit_ids = data.units.id.astype(str)
    truth = _truth(data_path, unit_ids)
    scores = {} if truth is None else {k: score(v, truth, scored(k)[1]) for k, v in matrices.items() if scored(k)[0]}
    atomic_savez(out_path, unit_ids=unit_ids, combine=combine, split=split, provenance=as_text(cfg), **matrices)
    stem = Path(out_path).with_suffix("")
    figures = [connectivity_figure({k: v for k, v in matrices.items() if scored(k)[0]}, truth, f"{stem}_matrices.png")]
    if "stimulus_attention" in matrices:
        figures.append(stimulus_maps(matrices["stimulus_attention"], unit_ids, f"{stem}_stimulus.png"))
    return {"scores": scores, "figures": [str(f) for f in figures]}


def _truth(data_path, unit_ids):
    """The true coupling W[target, source] of a synthetic recording, if its truth file is beside it."""
    path = Path(data_path).with_suffix(".truth.npz")
    if not path.exists():
        return None
    with np.load(path) as truth:
        if "coupling" not in truth or list(truth["unit_ids"].astype(str)) != list(unit_ids):
            return None
        return truth["coupling"]


def format_scores(scores):
    width = max([len("measure"), *map(len, scores)])
    lines = [f"{'measure':<{width}} {'R²':>7} {'Spearman':>9} {'AUROC':>7}"]
    for k, s in scores.items():
        lines.append(f"{k:<{width}} {s['r2']:7.3f} {s['spearman']:9.3f} {s['auroc']:7.3f}")
    return "\n".join(lines)
