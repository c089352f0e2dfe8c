"""The Poisson GLM baseline (docs/design.md §6), built once here and used by every analysis.

On the model's 1 ms grid, each unit's log rate per bin is

    log λ_i(t) = b_i + Σ_k W_ki x_k(t)

with features x (z-scored on the training split):
- stimulus: the frame on screen, as its leading principal components (PCA of block-averaged
  pixels, or of a cached backbone's features), filtered by raised-cosine lag bases spanning
  0 - `stim_lags` s (latency and temporal filtering); with `gaze`, the pixels in eye-centred
  coordinates (the frame shifted by minus the gaze, data/gaze.py), as the model sees them;
- behaviour: the current value of each input variable;
- spike history: every unit's past spikes filtered by raised-cosine bases over 1 bin -
  `history` s (own history on the diagonal, coupling off it).
Weights are fitted by L-BFGS on the training split for a path of L2 penalties (warm-started,
strongest first; a fit still short of the minimum after `max_iter` iterations warns); the chosen
one has the best validation log-likelihood among those whose closed-loop rollout of validation
data is stable (population rate within 0.5-2x the recorded). Simulation is closed loop like the
model's: Poisson counts drawn bin by bin (rate and count capped at `max_count` per bin, so an
unstable fit cannot run away), history from the simulated spikes, the recorded activity before
the trial start as the initial state.
"""
import warnings
from dataclasses import asdict, dataclass

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from tqdm import tqdm

from .bases import raised_cosines
from .data.gaze import Gaze, eye_centred
from .data.recording import behavior_at, frames_shown, movie_frame_dataset, open_recording, spike_counts
from .draws import Draws, poisson_counts
from .errors import InputError
from .simulations import Simulation, trial_seed

GRAD_TOL = 1e-4          # largest gradient entry (of the loss per spike) at which a fit counts as converged


class ConvergenceWarning(UserWarning):
    """L-BFGS stopped before the GLM's loss reached a minimum."""


GLM_STREAM = 0x9E6C63D0676A9A99     # mixed into the GLM's draw keys: its draws are not the model's of the same seed
GLM_ROWS = 64                       # (trial, repeat) rows rolled out at once, at most ...
GLM_BYTES = 2 ** 30                 # ... as many as hold their trials' log rates (bins x units) in this
DRAWN_AT_ONCE = 2 ** 21             # uniforms a rollout draws in one call (whole bins of all its rows, at least one)


@dataclass
class GLMConfig:
    bin: float = 0.001
    stim_components: int = 16
    stim_lags: float = 0.3
    stim_bases: int = 6
    history: float = 0.05
    history_bases: int = 3
    penalties: tuple = (1.0, 1e-1, 1e-2, 1e-3)
    max_iter: int = 30
    max_count: int = 1
    downsample: int = 4               # pixel block size before PCA
    gaze: Gaze = Gaze()               # given: frames in eye-centred coordinates (pixels only)


def lag_filter(signal, kernel):
    """Causal filtering of signal (S, C) by kernel (nb, L) over lags 0..L-1: returns the
    (S - L + 1, C * nb) outputs that have a full past, feature c * nb + b = Σ_l kernel[b, l] signal[t - l, c]."""
    x = torch.as_tensor(signal, dtype=torch.float32).T[:, None, :]                 # (C, 1, S)
    w = torch.as_tensor(kernel[:, ::-1].copy(), dtype=torch.float32)[:, None, :]   # (nb, 1, L)
    y = F.conv1d(x, w)                                                              # (C, nb, S - L + 1)
    return y.permute(2, 0, 1).reshape(y.shape[2], -1).numpy()


class PoissonGLM:
    """A fitted GLM: stimulus PCA, bases, feature standardisation, weights and bias."""

    def __init__(self, cfg, unit_ids, behavior, stimulus, mean, std, weight, bias, penalty):
        self.cfg, self.unit_ids, self.behavior = cfg, list(unit_ids), list(behavior)
        self.stimulus = stimulus                  # StimulusPCs, or None without a movie
        self.mean, self.std, self.weight, self.bias, self.penalty = mean, std, weight, bias, penalty
        self.stim_kernel = raised_cosines(cfg.stim_bases, 0, int(round(cfg.stim_lags / cfg.bin)))
        self.hist_kernel = raised_cosines(cfg.history_bases, 1, int(round(cfg.history / cfg.bin)))
        self.pad = max(self.stim_kernel.shape[1], self.hist_kernel.shape[1]) - 1

    @property
    def n_history_features(self):
        return len(self.unit_ids) * len(self.hist_kernel)

    # ------------------------------------------------------------------ features

    def design(self, data, start, end):
        """Raw features (T, F) of the bins of [start, end) and their counts (T, N); the history
        features use the recorded spikes."""
        stim = self.external_features(data, start, end)
        counts = spike_counts(data, start - self.pad * self.cfg.bin, end, self.cfg.bin)
        hist = lag_filter(counts, self.hist_kernel)[-len(stim):]
        return np.concatenate([stim, hist], 1), counts[self.pad:]

    def external_features(self, data, start, end):
        """Stimulus and behaviour features (T, F_ext) of the bins of [start, end)."""
        b = self.cfg.bin
        k0, k1 = int(round(start / b)), int(round(end / b))
        times = (np.arange(k0 - self.pad, k1) + 0.5) * b
        parts = []
        if self.stimulus is not None:
            parts.append(lag_filter(self.stimulus.at(data, times), self.stim_kernel)[-(k1 - k0):])
        parts += [behavior_at(data, v, times[self.pad:])[:, None] for v in self.behavior]
        return np.concatenate(parts, 1).astype(np.float32) if parts else np.zeros((k1 - k0, 0), np.float32)

    def history_weights(self):
        """(source, basis, target): the spike-history weights per source spike (the feature
        standardisation undone)."""
        n, nb = len(self.unit_ids), len(self.hist_kernel)
        return (self.weight[-self.n_history_features:] / self.std[-self.n_history_features:, None]).view(n, nb, n)

    def history_effects(self):
        """(L, N, N): what a spike of unit n adds to unit m's log rate l + 1 bins later
        (`history_weights` through the bases)."""
        w = self.history_weights()
        kernel = torch.as_tensor(self.hist_kernel[:, 1:], dtype=w.dtype)                    # (nb, L), lags 1..L
        return torch.einsum("kl,skm->lsm", kernel, w)

    def log_rate(self, features):
        z = (torch.as_tensor(features) - self.mean) / self.std
        return z @ self.weight + self.bias

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, path, cfg=GLMConfig(), behavior=(), feature_file=None, progress=True, stable_seconds=3.0):
        """Fit on the training split of recording `path`; the penalty is chosen on validation, among
        fits whose closed-loop rollouts of `stable_seconds` (set it to the simulated trials' length)
        stay stable."""
        data = open_recording(path)
        pcs = StimulusPCs.fit(data, path, cfg, feature_file) if "movies" in data.keys() else None
        n = len(data.units.id)
        glm = cls(cfg, data.units.id.astype(str), behavior, pcs, 0.0, 1.0, None, None, None)
        train = _stack(glm, data, data.train_domain)
        valid = _stack(glm, data, data.valid_domain)
        if train[1].sum() == 0:
            raise InputError(path, ("train_domain", "no spikes in the training split; the GLM cannot be fitted"))
        mean, std = train[0].mean(0), train[0].std(0) + 1e-6
        x_tr, y_tr = (train[0] - mean) / std, train[1]
        x_va, y_va = (valid[0] - mean) / std, valid[1]
        weight = torch.zeros(x_tr.shape[1], n, requires_grad=True)
        bias = torch.log(y_tr.mean(0) + 1e-8).clone().requires_grad_(True)
        fits = []
        for penalty in tqdm(cfg.penalties, desc="fitting GLM", disable=not progress):     # strongest first
            _lbfgs(x_tr, y_tr, weight, bias, penalty, cfg.max_iter)
            with torch.no_grad():
                ll = float(_poisson_ll(x_va @ weight + bias, y_va).sum()) if len(y_va) else -float(penalty)
            fit = cls(cfg, glm.unit_ids, behavior, pcs, mean, std, weight.detach().clone(), bias.detach().clone(),
                      penalty)
            fits.append((fit.stable(data, stable_seconds), ll, fit))
        return max(fits, key=lambda f: (f[0], f[1]))[2]

    def stable(self, data, seconds=3.0, low=0.5, high=2.0):
        """Whether closed-loop rollouts of the first `seconds` of (up to two) validation intervals
        keep the population rate within [low, high] x the recorded one: an exp-GLM with strong
        coupling can fit well one step ahead and still run away when it feeds on its own spikes."""
        dom = data.valid_domain if len(data.valid_domain) else data.train_domain
        start = np.asarray(dom.start)[:2]
        end = np.minimum(np.asarray(dom.end)[:2], start + seconds)
        trials = {"index": np.arange(len(start)), "start": start, "end": end, "stimulus_id": np.full(len(start), -1)}
        simulated = len(self.simulate(data, trials, 1, seed=0, progress=False).timestamps)
        recorded = sum(len(data.spikes.slice(a, b, reset_origin=False).timestamps) for a, b in zip(start, end))
        return low <= simulated / max(recorded, 1) <= high

    # ------------------------------------------------------------------ scoring and simulation

    def log_likelihood(self, data, start, end):
        """Per-bin, per-unit Poisson log-likelihood (T, N) of the recorded spikes of [start, end)
        given their recorded history, and the counts."""
        x, counts = self.design(data, start, end)
        counts = torch.as_tensor(counts, dtype=torch.float32)
        with torch.no_grad():
            return _poisson_ll(self.log_rate(x), counts).numpy(), counts.numpy()

    @torch.no_grad()
    def simulate(self, data, trials, repeats, seed, progress=True):
        """Closed-loop Poisson rollouts of `trials` (dict index/start/end/stimulus_id), each
        (trial, repeat) with its own counter-based draws, keyed like the model's and salted apart
        (`GLM_STREAM`), up to `GLM_ROWS` of them at a time (fewer with long trials: `GLM_BYTES`)."""
        b = self.cfg.bin
        items = np.array([(i, r) for i in range(len(trials["index"])) for r in range(repeats)]).reshape(-1, 2)
        effect = self.history_effects()                                      # (L, N, N): lags 1..L
        L, n_ext = len(effect), self.weight.shape[0] - self.n_history_features
        fixed = self.bias - (self.mean[n_ext:] / self.std[n_ext:]) @ self.weight[n_ext:]   # history at zero
        first_bin = np.round(np.asarray(trials["start"], dtype=float) / b).astype(np.int64)
        drives, recorded = [], []                                            # of each trial, once for its repeats
        for s, e, k0 in zip(np.asarray(trials["start"], dtype=float), np.asarray(trials["end"], dtype=float), first_bin):
            ext = torch.as_tensor(self.external_features(data, s, e)).to(effect.dtype)
            drives.append((ext - self.mean[:n_ext]) / self.std[:n_ext] @ self.weight[:n_ext] + fixed)
            recorded.append(spike_counts(data, (k0 - L) * b, k0 * b, b))
        keys = [trial_seed(seed, int(trials["index"][i]), r) ^ GLM_STREAM for i, r in items]
        row_bytes = effect.element_size() * (max(map(len, drives)) + L) * drives[0].shape[1]
        at_once = max(1, min(GLM_ROWS, GLM_BYTES // row_bytes))
        chunks = range(0, len(items), at_once)
        spikes = []
        with tqdm(total=sum(max(len(drives[i]) for i in items[c:c + at_once, 0]) for c in chunks),
                  desc="simulating GLM", unit="bin", disable=not progress, mininterval=1) as bar:
            for c in chunks:
                rows = items[c:c + at_once, 0]
                k, row, unit = self._closed_loop([drives[i] for i in rows], [recorded[i] for i in rows], effect,
                                                Draws(keys[c:c + at_once]), bar)
                spikes.append((k, row + c, unit))
        k, row, units = (np.concatenate(c) for c in zip(*spikes))
        trial, repeat = items[row, 0], items[row, 1]
        times, trial = (first_bin[trial] + k + 0.5) * b, np.asarray(trials["index"])[trial]
        order = np.lexsort((units, times, repeat, trial))
        return Simulation(times[order], units[order], trial[order], repeat[order], np.asarray(self.unit_ids),
                          trials, repeats, {"model": "poisson GLM", "glm": str(asdict(self.cfg)), "seed": seed})

    def _closed_loop(self, drives, recorded, effect, draws, bar):
        """(bin, row, unit) of every spike of rows with log rates `drives` (T_row, N) but for their
        spike history, the `recorded` counts (L, N) before their first bin, the history's `effect`
        (`history_effects`) and `draws`. A spike's effect on the log rates of the next L bins is
        the same for every spike of its unit, so each bin adds its spikes' effects to the log
        rates ahead (`ahead`) instead of filtering the whole history again."""
        n, L, cap = drives[0].shape[1], len(effect), self.cfg.max_count
        lengths = [len(d) for d in drives]
        T = max(lengths)
        ahead = torch.stack([F.pad(d, (0, 0, 0, T + L - len(d))) for d in drives], 1)  # (T + L, B, N) log rates
        for t, counts in enumerate(np.stack(recorded, 1), start=-L):        # the recorded history
            _add_effects(ahead, effect, t, *_spikes(counts))
        running = np.arange(T)[:, None] < np.asarray(lengths)                                   # (T, B)
        spikes = [(np.zeros(0, np.int64),) * 3]
        block = max(1, DRAWN_AT_ONCE // (len(drives) * n))                  # bins whose uniforms are drawn at once
        for t in range(T):
            if t % block == 0:                              # bin t's uniforms: its row's draws t * N .. t * N + N - 1
                u = draws.uniforms(min(block, T - t) * n).reshape(len(drives), -1, n)
            rate = ahead[t].exp().clamp(max=cap).numpy()
            row, unit = _spikes(poisson_counts(rate, u[:, t % block], cap) * running[t][:, None])
            if len(row):
                spikes.append((np.full(len(row), t), row, unit))
                _add_effects(ahead, effect, t, row, unit)
            bar.update()
        return tuple(np.concatenate(c) for c in zip(*spikes))


def _spikes(counts):
    """(row, unit) of every spike of the counts (B, N) of one bin, a pair repeated by its count."""
    row, unit = np.nonzero(counts)
    if len(row) and counts.max() > 1:
        row, unit = np.repeat(row, counts[row, unit]), np.repeat(unit, counts[row, unit])
    return row, unit


def _add_effects(ahead, effect, t, row, unit):
    """Add the effects (L, N, N) of the spikes (`_spikes`) of bin t to the log rates `ahead`
    (T + L, B, N) of bins t + 1 .. t + L (those from 0 on)."""
    if len(row):
        first = max(0, -(t + 1))                                             # lags that land before bin 0
        ahead[t + 1 + first:t + 1 + len(effect)].index_add_(
            1, torch.from_numpy(row), effect[first:].index_select(1, torch.from_numpy(unit)))


def _stack(glm, data, domain):
    xs, ys = [], []
    for a, b in zip(np.asarray(domain.start), np.asarray(domain.end)):
        x, y = glm.design(data, a, b)
        xs.append(x)
        ys.append(y)
    if not xs:
        return torch.zeros(0, 0), torch.zeros(0, len(glm.unit_ids))
    return torch.as_tensor(np.concatenate(xs)), torch.as_tensor(np.concatenate(ys), dtype=torch.float32)


def _poisson_ll(log_rate, counts):
    return counts * log_rate - log_rate.exp() - torch.lgamma(counts + 1)


def _lbfgs(x, y, weight, bias, penalty, max_iter, grad_tol=GRAD_TOL):
    """Fit `weight` and `bias` in place: minimise the Poisson negative log-likelihood per recorded
    spike plus `penalty` |weight|^2 / 2 (the bias is not penalised). Warns (ConvergenceWarning)
    when L-BFGS used up its iterations or evaluations with the gradient still above `grad_tol`:
    the fit then depends on `max_iter`."""
    n_spikes = float(y.sum())
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        eta = x @ weight + bias
        loss = ((eta.exp() - y * eta).sum() / n_spikes + penalty * (weight ** 2).sum() / 2)
        loss.backward()
        return loss
    opt.step(closure)
    state, budget = opt.state[weight], opt.param_groups[0]
    if state["n_iter"] < max_iter and state["func_evals"] < budget["max_eval"]:
        return                                      # stopped by its own tolerances
    closure()                                       # the gradient at the final weights
    gradient = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
    if gradient > grad_tol:
        warnings.warn(f"the GLM fit (penalty {penalty:g}) used up its {state['n_iter']} L-BFGS iterations "
                      f"({state['func_evals']} evaluations, max_iter {max_iter}) with the gradient still at "
                      f"{gradient:.2g} > {grad_tol:g}: raise max_iter", ConvergenceWarning, stacklevel=2)


class StimulusPCs:
    """The frame on screen at each time as its leading principal components, fitted on the
    training split: of block-averaged pixels or of cached backbone features. With `cfg.gaze`,
    each presentation of a frame is first moved into eye-centred coordinates by the gaze at its
    onset, exactly as the model's window loader moves it, then block-averaged."""

    def __init__(self, pca, gaze, downsample, table=None):
        self.pca, self.gaze, self.downsample = pca, gaze, downsample
        self.table = table                  # (stored frames, K) without gaze
        self.seen = {}                      # with gaze: (frame, onset) -> components, each computed once

    def at(self, data, times):
        """(T, K) components of the frame seen at each time; 0 where no frame is shown."""
        index, onset = frames_shown(data, times)
        out = np.zeros((len(times), self.pca.n_components_), np.float32)
        if not self.gaze:
            out[index >= 0] = self.table[index[index >= 0]]
            return out
        if not len(times):
            return out
        key = np.nan_to_num(onset, nan=-1.0)
        change = np.r_[True, (np.diff(index) != 0) | (np.diff(key) != 0)]
        first = np.flatnonzero(change)                      # one image per presentation of a frame
        shown = index[first] >= 0
        keys = [(int(i), float(t)) for i, t in zip(index[first[shown]], onset[first[shown]])]
        new = sorted({k for k in keys if k not in self.seen})
        if new:
            frames, onsets = np.array([k[0] for k in new]), np.array([k[1] for k in new])
            self.seen.update(zip(new, self.pca.transform(self.images(data, frames, onsets)).astype(np.float32)))
        per_run = np.zeros((len(first), out.shape[1]), np.float32)
        if keys:
            per_run[shown] = np.stack([self.seen[k] for k in keys])
        return per_run[np.cumsum(change) - 1]

    def images(self, data, index, onset):
        """Block-averaged eye-centred images (n, pixels) of stored frames `index` shown at `onset`."""
        x, y = self.gaze.pixels(data, onset)
        out = []
        for a in range(0, len(index), 4096):                # bounded memory on long recordings
            wanted, where = np.unique(index[a:a + 4096], return_inverse=True)
            moved = eye_centred(movie_frame_dataset(data)[wanted][where], x[a:a + 4096], y[a:a + 4096])
            out.append(_block_average(moved, self.downsample).reshape(len(moved), -1))
        return np.concatenate(out)

    @classmethod
    def fit(cls, data, path, cfg, feature_file):
        dom = data.train_domain
        times = np.concatenate([np.arange(a, b, 0.01) for a, b in zip(np.asarray(dom.start), np.asarray(dom.end))]
                               + [np.zeros(0)])
        index, onset = frames_shown(data, times)
        shown = np.unique(index[index >= 0])
        if len(shown) < 2:
            raise InputError(path, ("stimulus", "fewer than two movie frames are shown in the training split"))
        if cfg.gaze:
            if feature_file is not None:
                raise InputError(feature_file, ("gaze", "cached features cannot be moved with the eye; use pixels"))
            cfg.gaze.check(data, movie_frame_dataset(data).shape[1:3], path)
            seen = np.unique(np.stack([index, onset], 1)[index >= 0], axis=0)     # each presentation once
            fitted = cls(None, cfg.gaze, cfg.downsample)
            sample = fitted.images(data, seen[:, 0].astype(np.int64), seen[:, 1])
            fitted.pca = PCA(n_components=min(cfg.stim_components, len(shown) - 1, sample.shape[1]),
                             random_state=0).fit(sample)
            fitted.seen = dict(zip([(int(i), float(t)) for i, t in seen],        # the training split's, kept
                                   fitted.pca.transform(sample).astype(np.float32)))
            return fitted
        if feature_file is not None:
            with h5py.File(feature_file, "r") as f:
                frames = f["features"][()].reshape(len(f["features"]), -1)
        else:
            frames = _block_average(movie_frame_dataset(data), cfg.downsample)
            frames = frames.reshape(len(frames), -1)
        k = min(cfg.stim_components, len(shown) - 1, frames.shape[1])
        pca = PCA(n_components=k, random_state=0).fit(frames[shown])
        return cls(pca, cfg.gaze, cfg.downsample, pca.transform(frames).astype(np.float32))


def _block_average(source, d):
    """Stored frames (F, H, W) averaged over d x d pixel blocks, float32 (F, H // d, W // d)."""
    chunks = []
    for i in range(0, len(source), 1024):
        x = np.asarray(source[i:i + 1024], dtype=np.float32)
        H, W = x.shape[1] // d * d, x.shape[2] // d * d
        chunks.append(x[:, :H, :W].reshape(len(x), H // d, d, W // d, d).mean((2, 4)))
    return np.concatenate(chunks)
