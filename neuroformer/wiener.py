"""The Wiener filter inside a decoding model, fitted before training.

Each regression target's linear read-out of the window's binned counts (`Neuroformer.wiener`) is
ridge regression on every training window (standardised counts, fitted intercept). Its penalty
is chosen by blocked cross-validation on the training windows (FOLDS contiguous blocks of the
tiling, each predicted by the fit to the others) with the score the ridge baseline of `neuroformer
decode` is chosen by: Pearson r after the best Gaussian smoothing (`smoothing.smoothed_r`). Not on
the validation split: its few minutes choose between designs by noise (the velocity population's x:
counts over innovations by 0.0004 of validation r, 0.012 of test r below), and decode keeps it for
its own choices. Nor by mean squared error, which counts a larger penalty's shrinkage of the trace
against it though the smoothing and r chosen afterwards do not. The fit reads the training
windows twice per design and keeps only sums (`Moments`, per block) and out-of-fold predictions,
so its memory is the square of the number of counts per target (a few such arrays while solving),
whatever the recording's length. Training then leaves the filter fixed: the transformer starts
from the best linear decoder of the window and learns only what it misses.

A second design is fitted the same way: innovations, each count minus the count its unit's own
last two bins predict (a table of mean counts per unit and own-history state, fitted in the first
pass). Where a unit's history shapes its counts (bursts, refractoriness), what its count says
about the target is how far it departs from that prediction, as in the point-process decoder's
update (Truccolo et al. 2005: the log-likelihood's gradient in the drive is the count minus the
rate given history). Each target keeps the design with the higher cross-validated score. Not
tried with one population bin (no own history in the window) nor across several recordings (a
unit is absent from the others' windows, where its innovation would not be 0).
"""
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .data.windows import collate_windows
from .model import OWN_HISTORY_BINS, OWN_HISTORY_STATES
from .smoothing import smoothed_r

ALPHAS = 10.0 ** np.arange(-1, 6)     # ridge penalties tried (standardised counts)
OWN_HISTORY_PRIOR = 5.0               # bins of a unit's mean count in each own-history state's expectation
FOLDS = 5                             # contiguous blocks of the training windows that choose the penalty


@dataclass
class Moments:
    """The sums over a design's rows (x: counts, y: value) that ridge regression reads."""
    n: int
    sum_x: np.ndarray                   # (p,)
    sum_y: float
    sum_xx: np.ndarray                  # (p, p)
    sum_xy: np.ndarray                  # (p,)
    sum_yy: float

    @classmethod
    def empty(cls, p):
        return cls(0, np.zeros(p), 0.0, np.zeros((p, p)), np.zeros(p), 0.0)

    def add(self, x, window, y, gram=None):
        """Add the samples y (S,) whose rows are x[window] (x: (B, p) per window, window: (S,)
        indices into it): each window's row weighted by its number of samples, read once.
        Returns their (p, p) sum of x x^T, which another target sampled in the same windows passes
        as `gram` instead of computing it again."""
        c = np.bincount(window, minlength=len(x)).astype(float)
        gram = (x * c[:, None]).T @ x if gram is None else gram
        self.n += len(y)
        self.sum_x += c @ x
        self.sum_y += float(y.sum())
        self.sum_xx += gram
        self.sum_xy += np.bincount(window, weights=y, minlength=len(x)) @ x
        self.sum_yy += float(y @ y)
        return gram

    def __add__(self, other):
        return Moments(self.n + other.n, self.sum_x + other.sum_x, self.sum_y + other.sum_y, self.sum_xx + other.sum_xx,
                       self.sum_xy + other.sum_xy, self.sum_yy + other.sum_yy)

    def centred(self):
        """Means of x and y, and the scatter of x, of x with y and of y about them."""
        mx, my = self.sum_x / self.n, self.sum_y / self.n
        return (mx, my, self.sum_xx - self.n * np.outer(mx, mx), self.sum_xy - self.n * mx * my,
                self.sum_yy - self.n * my * my)


class RidgePath:
    """Ridge regression on standardised x with an intercept (sklearn's StandardScaler then Ridge)
    for any penalty, from the training rows' Moments: one eigendecomposition serves every penalty."""

    def __init__(self, moments):
        self.n = moments.n
        self.mean_x, self.mean_y, cxx, cxy, self.cyy = moments.centred()
        scale = np.sqrt(np.clip(np.diag(cxx), 0, None) / self.n)
        self.scale = np.where(scale < 10 * np.finfo(float).eps, 1.0, scale)   # constant counts: weight 0
        self.eigenvalues, self.vectors = np.linalg.eigh(cxx / np.outer(self.scale, self.scale))
        self.projected = self.vectors.T @ (cxy / self.scale)

    def fit(self, alpha):
        """(weight, bias) on raw counts."""
        weight = self.vectors @ (self.projected / (self.eigenvalues + alpha)) / self.scale
        return weight, float(self.mean_y - weight @ self.mean_x)

    def generalised_cv(self, alpha):
        """Generalised cross-validation error (Golub, Heath & Wahba 1979): the training error over
        (1 - effective parameters / rows)², the intercept counted as one."""
        shrunk = self.projected / (self.eigenvalues + alpha)        # the weight in eigen coordinates
        residual = max(self.cyy - 2 * self.projected @ shrunk + self.eigenvalues @ shrunk ** 2, 0.0)
        eigenvalues = np.clip(self.eigenvalues, 0, None)
        dof = 1 + np.sum(eigenvalues / (eigenvalues + alpha))
        return residual / self.n / (1 - dof / self.n) ** 2


def target_samples(model, dataset, batches, innovations=False, desc=None):
    """Per batch of windows: (the windows' binned counts (B, bins * V), tensor; per target, (the
    design rows (B, p): counts, or with `innovations` counts minus their expected counts; each
    target sample's window (S,); its standardised value (S,); its place (S,): the index of its
    recording times 10^12 plus its time there in units of 10 µs))."""
    ids = list(dataset.recordings.recording_ids)
    with torch.no_grad():
        for idx in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
            batch = collate_windows([dataset[i] for i in idx])
            recording = torch.tensor([ids.index(i.recording_id) for i in idx], dtype=torch.int64)
            counts = model.binned_counts(batch).double()
            x = (counts - model.expected_counts(counts) if innovations else counts).numpy()
            samples = {}
            for name in model.wiener_targets:
                b = batch[f"behavior.{name}"]
                z, mask = model.standardised(batch, name), b["mask"]
                window = torch.nonzero(mask)[:, 0]
                times = batch["t0"][window] + b["time"][mask].double()
                place = recording[window] * 10**12 + torch.round(times * 1e5).long()
                samples[name] = (x, window.numpy(), z[mask].double().numpy(), place.numpy())
            yield counts, samples


class OwnHistory:
    """Sums of each unit's count per own-history state (`Neuroformer.own_history_states`) over
    the population bins from the third of each window on (from its last with fewer bins), where
    the states hold the window's own counts rather than the empty bins assumed before it."""

    def __init__(self, model):
        self.model = model
        self.total = torch.zeros(model.wiener_own_history.numel(), dtype=torch.float64)
        self.seen = torch.zeros_like(self.total)

    def add(self, counts):
        counts = counts.view(len(counts), self.model.population_bins, -1)
        first = min(OWN_HISTORY_BINS, counts.shape[1] - 1)
        states = self.model.own_history_states(counts)[:, first:]
        index = (torch.arange(counts.shape[-1]) * OWN_HISTORY_STATES + states).flatten()
        self.total += torch.bincount(index, counts[:, first:].flatten(), len(self.total))
        self.seen += torch.bincount(index, minlength=len(self.seen)).double()

    def table(self):
        """(V, states) mean count per unit and state, shrunk towards the unit's mean count by
        OWN_HISTORY_PRIOR bins of it (a state seen rarely predicts about the mean)."""
        total, seen = self.total.view(-1, OWN_HISTORY_STATES), self.seen.view(-1, OWN_HISTORY_STATES)
        mean = total.sum(1, keepdim=True) / seen.sum(1, keepdim=True).clamp(min=1)
        return (total + OWN_HISTORY_PRIOR * mean) / (seen + OWN_HISTORY_PRIOR)


class Trace:
    """Predicted samples (n, k) in time order, each once (a sample that two windows hold is read
    from the first, as decode reads it), with their values and contiguous segments: a new one
    at a gap of over 1.5 sampling periods, another recording or another block."""

    def __init__(self, predictions, values, places, blocks):
        predictions, values, places, blocks = map(np.concatenate, (predictions, values, places, blocks))
        places, first = np.unique(places, return_index=True)        # sorted
        self.prediction, self.y, blocks = predictions[first], values[first], blocks[first]
        gaps = np.diff(places)
        cut = (gaps > 1.5 * np.median(gaps)) | (np.diff(blocks) != 0) if len(gaps) else np.zeros(0, dtype=bool)
        self.segment = np.concatenate([[0], np.cumsum(cut)])

    def losses(self):
        """Per column, 1 - its r after its best smoothing (`smoothed_r`)."""
        return [1.0 - smoothed_r(p, self.y, self.segment)[0] for p in self.prediction.T]


def design_losses(model, dataset, batches, innovations, desc=None, fit_table=False):
    """Per target, (RidgePath of every training window's sums, loss per ALPHAS: `Trace.losses` of
    the out-of-fold predictions of FOLDS contiguous blocks of `batches`, or generalised
    cross-validation error with fewer than two batches or where leaving out a block leaves fewer
    than two of the target's samples: the same for every design, whose samples are the same) of
    one design. With `fit_table`, the first pass also fits `model.wiener_own_history`, which the
    innovations' pass reads."""
    folds = min(FOLDS, len(batches))
    block = np.arange(len(batches)) * folds // max(1, len(batches))
    p = model.wiener_weight.shape[0]
    sums = {name: [Moments.empty(p) for _ in range(folds)] for name in model.wiener_targets}
    history = OwnHistory(model) if fit_table else None
    for b, (counts, samples) in zip(block, target_samples(model, dataset, batches, innovations, desc)):
        if history is not None:
            history.add(counts)
        grams = {}                             # targets sampled in the same windows share x x^T
        for name, (x, window, z, _) in samples.items():
            key = window.tobytes()
            grams[key] = sums[name][b].add(x, window, z, grams.get(key))
    if history is not None:
        model.wiener_own_history.copy_(history.table())
    paths, losses, fits = {}, {}, {}
    for name, blocks in sums.items():
        n = sum(m.n for m in blocks)
        if n < 2:                           # nothing to fit: the filter stays zero
            continue
        paths[name] = RidgePath(sum(blocks[1:], blocks[0]))
        if folds > 1 and all(n - m.n >= 2 for m in blocks):    # per block, the fit to the others at every penalty
            fits[name] = [[path.fit(a) for a in ALPHAS] for path in
                          (RidgePath(sum((m for j, m in enumerate(blocks) if j != k), Moments.empty(p)))
                           for k in range(folds))]
        else:
            losses[name] = [paths[name].generalised_cv(a) for a in ALPHAS]
    held_out = {name: ([], [], [], []) for name in fits}
    for b, (_, samples) in zip(block, target_samples(model, dataset, batches, innovations) if fits else ()):
        for name, (x, window, z, places) in samples.items():
            if name in fits:
                rows = x[window]
                for part, value in zip(held_out[name], (np.stack([rows @ w + c for w, c in fits[name][b]], 1), z,
                                                        places, np.full(len(z), b))):
                    part.append(value)
    losses.update({name: Trace(*parts).losses() for name, parts in held_out.items()})
    return {name: (paths[name], losses[name]) for name in paths}


def fit_wiener(model, dataset, train_windows, batch_size=32):
    """Fit the model's Wiener filter in place on every one of `train_windows` (a tiling, in time
    order): its own-history table, and per target the weights, bias and input (counts, or
    innovations where that scores better) with the penalty chosen by `design_losses`; returns
    {target: {"penalty", "input"}} of the fitted targets."""
    batches = [train_windows[i:i + batch_size] for i in range(0, len(train_windows), batch_size)]
    designs = (False, True) if model.population_bins > 1 and len(dataset.recordings.recording_ids) == 1 else (False,)
    chosen = {}
    for innovations in designs:                # counts first: it also fits the own-history table
        desc = "fitting the Wiener filter" + (" on innovations" if innovations else "")
        for name, (path, losses) in design_losses(model, dataset, batches, innovations, desc,
                                                  fit_table=len(designs) > 1 and not innovations).items():
            best = strongest_least(losses)
            if name not in chosen or losses[best] < chosen[name][0]:
                chosen[name] = losses[best], innovations, ALPHAS[best], path.fit(ALPHAS[best])
    out = {}
    for name, (_, innovations, alpha, (weight, bias)) in chosen.items():
        set_filter(model, name, weight, bias, innovations)
        out[name] = {"penalty": float(alpha), "input": "innovations" if innovations else "counts"}
    return out


def strongest_least(losses):
    """Index into ALPHAS of the least loss, the strongest penalty among equal ones: a target whose
    held-out trace is constant scores every penalty alike (r 0), and then shrinking most is right.
    A NaN loss counts as the worst."""
    losses = np.nan_to_num(np.asarray(losses, dtype=float), nan=np.inf)
    return int(np.flatnonzero(losses == losses.min())[-1])


def set_filter(model, name, weight, bias, innovations):
    """Target `name`'s filter in the model: weights (p,), bias, and whether it reads innovations."""
    k = model.wiener_targets.index(name)
    model.wiener_weight[:, k] = torch.as_tensor(weight, dtype=model.wiener_weight.dtype)
    model.wiener_bias[k] = bias
    model.wiener_innovation[k] = float(innovations)
