"""The Wiener filter inside a decoding model, fitted before training.

Each regression target's linear read-out of the window's binned counts (`Neuroformer.wiener`) is
ridge regression on every training window (standardised counts, fitted intercept), its penalty
chosen on the validation windows as the ridge baseline of `neuroformer decode` chooses its own
(here by mean squared error). The fit reads the training windows once and keeps only their sums
(`Moments`), so its memory is the square of the number of counts per target (a few such arrays
while solving), whatever the recording's length. Training then leaves the filter fixed: the
transformer starts from the best linear decoder of the window and learns only what it misses.
"""
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .data.windows import collate_windows

ALPHAS = 10.0 ** np.arange(-1, 6)     # ridge penalties tried (standardised counts)


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

    def add(self, x, window, y):
        """Add the samples y (S,) whose rows are x[window] (x: (B, p) per window, window: (S,)
        indices into it): each window's row weighted by its number of samples, read once."""
        c = np.bincount(window, minlength=len(x)).astype(float)
        self.n += len(y)
        self.sum_x += c @ x
        self.sum_y += float(y.sum())
        self.sum_xx += (x * c[:, None]).T @ x
        self.sum_xy += np.bincount(window, weights=y, minlength=len(x)) @ x
        self.sum_yy += float(y @ y)

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


def target_samples(model, dataset, batches, desc=None):
    """Per batch of windows, per target: (the windows' binned counts (B, p), each target sample's
    window (S,), its standardised value (S,))."""
    with torch.no_grad():
        for idx in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
            batch = collate_windows([dataset[i] for i in idx])
            counts = model.binned_counts(batch).double().numpy()
            samples = {}
            for name in model.wiener_targets:
                z, mask = model.standardised(batch, name), batch[f"behavior.{name}"]["mask"]
                samples[name] = (counts, torch.nonzero(mask)[:, 0].numpy(), z[mask].double().numpy())
            yield samples


def fit_wiener(model, dataset, train_windows, valid_batches, batch_size=32):
    """Fit `model.wiener_weight` / `wiener_bias` in place on every one of `train_windows`, the
    penalty chosen by mean squared error on `valid_batches` (by generalised cross-validation for
    a target without a validation sample); returns {target: chosen penalty}."""
    train = {name: Moments.empty(model.wiener_weight.shape[0]) for name in model.wiener_targets}
    batches = [train_windows[i:i + batch_size] for i in range(0, len(train_windows), batch_size)]
    for samples in target_samples(model, dataset, batches, "fitting the Wiener filter"):
        for name, sample in samples.items():
            train[name].add(*sample)
    valid = {name: ([], []) for name in model.wiener_targets}           # few windows: kept as rows
    for samples in target_samples(model, dataset, valid_batches):
        for name, (counts, window, z) in samples.items():
            valid[name][0].append(counts[window])
            valid[name][1].append(z)
    penalties = {}
    for k, name in enumerate(model.wiener_targets):
        if train[name].n < 2:                   # nothing to fit: the filter stays zero
            continue
        path = RidgePath(train[name])
        if sum(map(len, valid[name][1])):
            x, y = (np.concatenate(part) for part in valid[name])
            errors = [np.mean((x @ w + b - y) ** 2) for w, b in map(path.fit, ALPHAS)]
        else:
            errors = [path.generalised_cv(a) for a in ALPHAS]
        alpha = float(ALPHAS[int(np.argmin(errors))])
        weight, bias = path.fit(alpha)
        model.wiener_weight[:, k] = torch.as_tensor(weight, dtype=model.wiener_weight.dtype)
        model.wiener_bias[k] = bias
        penalties[name] = alpha
    return penalties
