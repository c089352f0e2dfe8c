"""Baseline behaviour decoders on binned spike counts, or on binned ΔF/F when the spikes are
events deconvolved from calcium traces (what one would decode from without a deconvolution;
docs/design.md §5.2).

- ridge: a Wiener filter, ridge regression on the binned activity of every unit at lags -L..L bins;
- lasso: the same design with an L1 penalty;
- glm: a generalised linear model of the sample's own bin (no lags), Poisson with a log link
  for non-negative targets (e.g. speed), Gaussian otherwise;
- mlp: a one-hidden-layer network on the lagged binned activity;
- gru: a bidirectional GRU over each interval's sequence of bins.
A classification target (a variable of integer class labels) gets the same designs as
classifiers: logistic regression (ridge, glm), L1-penalised logistic regression, one class against the rest (lasso), an
MLP classifier, and the GRU with a cross-entropy head.
Activity is read from the sample's own split interval only (zero beyond it), so no baseline
reads another split. Every setting of a model's grid is fitted on the training samples; which
one is kept is decided on validation (see `decode.choose`). Targets are standardised on train.
"""
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import Lasso, LogisticRegression, PoissonRegressor, Ridge
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from .data.imaging import binned_traces
from .data.recording import has_events, spike_counts

BASELINES = ("ridge", "lasso", "glm", "mlp", "gru")
GRU_STEPS = 400


@dataclass
class BinnedSplit:
    """Binned activity (n_bins, n_units) of each interval of a split (spike counts, or mean ΔF/F
    for `kind` "calcium"), and for every behaviour sample to decode its interval, its bin and its
    values (n, n_targets)."""
    binned: list
    interval: np.ndarray
    bin: np.ndarray
    y: np.ndarray
    kind: str = "counts"

    def compressed(self):
        """The binned activity on a scale for the GRU: log1p of counts, ΔF/F as it is."""
        return [np.log1p(b) if self.kind == "counts" else b for b in self.binned]

    @classmethod
    def of(cls, data, samples, bin_size):
        kind = baseline_input(data)
        reader = binned_traces if kind == "calcium" else spike_counts
        binned = [reader(data, a, b, bin_size) for a, b in zip(samples.starts, samples.ends)]
        bins = np.floor((samples.times - samples.starts[samples.interval]) / bin_size + 1e-9).astype(int)
        bins = np.minimum(bins, np.array([len(b) - 1 for b in binned])[samples.interval])
        return cls(binned, samples.interval, bins, samples.values, kind)

    def lagged(self, lags):
        """(n, n_units * (2 lags + 1)) binned activity at bins b-lags .. b+lags of each sample's interval."""
        out = np.zeros((len(self.bin), 2 * lags + 1, self.binned[0].shape[1]), dtype=np.float32)
        for k, binned in enumerate(self.binned):
            rows = np.flatnonzero(self.interval == k)
            padded = np.pad(binned, ((lags, lags), (0, 0)))
            for j in range(2 * lags + 1):
                out[rows, j] = padded[self.bin[rows] + j]
        return out.reshape(len(out), -1)


def baseline_input(data):
    """What the baselines read: "calcium" (binned ΔF/F) when the spikes are events deconvolved
    from the recording's traces, else "counts"."""
    return "calcium" if has_events(data) else "counts"


def baseline_grid(name, train, seed=0, classes=None):
    """Fit every setting of baseline `name` on `train`; yields (params, predict) where predict
    maps a BinnedSplit to predictions (n, n_targets) in the targets' units, or class labels
    where classes[k] > 0 (the number of classes of a classification target)."""
    classes = list(classes or [0] * train.y.shape[1])
    is_class = np.array(classes) > 0
    mean = np.where(is_class, 0.0, train.y.mean(0))          # class labels pass through unscaled
    std = np.where(is_class, 1.0, train.y.std(0) + 1e-9)
    z = (train.y - mean) / std
    if name == "gru":
        for hidden in (32, 64):
            net = _fit_gru(train, z, classes, hidden, seed)
            yield {"hidden": hidden}, lambda s, net=net: net.predict(s) * std + mean
        return
    for params, factory, per_target in _sklearn_grid(name, train, seed, classes):
        lags = params.get("lags", 0)
        x = train.lagged(lags)
        if per_target or is_class.any():     # one model per target; `raw` ones fit the values themselves
            fitted = []
            for k in range(z.shape[1]):
                model, raw = factory(k)
                fitted.append((make_pipeline(StandardScaler(), model).fit(x, train.y[:, k] if raw else z[:, k]), raw))
            predict = lambda s, f=fitted, lags=lags: _per_target(f, s.lagged(lags), mean, std)
        else:
            fitted = make_pipeline(StandardScaler(), factory(None)[0]).fit(x, z)
            predict = lambda s, f=fitted, lags=lags: f.predict(s.lagged(lags)).reshape(len(s.bin), -1) * std + mean
        yield params, predict


def _sklearn_grid(name, train, seed, classes):
    """(params, factory k -> (model, fits raw values), one model per target) per setting. A
    classification target gets the classifier of the same design (logistic, L1-logistic, MLP)."""
    def either(k, regressor, classifier):
        return (classifier, True) if k is not None and classes[k] else regressor
    if name == "ridge":
        for lags in (0, 2, 5, 10):
            for alpha in (1.0, 10.0, 100.0, 1000.0, 10000.0):
                yield {"lags": lags, "alpha": alpha}, lambda k, a=alpha: either(
                    k, (Ridge(alpha=a), False), LogisticRegression(C=1 / a, max_iter=1000)), False
    elif name == "lasso":
        for lags in (2, 5):
            for alpha in (0.003, 0.01, 0.03, 0.1):
                yield {"lags": lags, "alpha": alpha}, lambda k, a=alpha: either(
                    k, (Lasso(alpha=a, max_iter=3000), False),
                    OneVsRestClassifier(LogisticRegression(C=1 / (a * len(train.y)), l1_ratio=1.0,
                                                           solver="liblinear"))), True
    elif name == "glm":
        poisson = (train.y >= 0).all(0) & (np.array(classes) == 0)
        family = ["categorical" if c else "poisson" if p else "gaussian" for c, p in zip(classes, poisson)]
        for alpha in (0.01, 0.1, 1.0, 10.0):
            yield ({"alpha": alpha, "family": family},
                   lambda k, a=alpha: either(k, (PoissonRegressor(alpha=a / 1000, max_iter=500), True) if poisson[k]
                                             else (Ridge(alpha=a), False), LogisticRegression(C=1 / a, max_iter=1000)),
                   True)
    elif name == "mlp":
        for lags in (2, 5, 10):                # up to ±0.5 s at 50 ms, as far as configs/decoding.yaml sees
            for alpha in (1e-3, 1e-1):
                net = dict(hidden_layer_sizes=(128,), alpha=alpha, early_stopping=True, max_iter=300, random_state=seed)
                yield ({"lags": lags, "alpha": alpha, "hidden": 128},
                       lambda k, net=net: either(k, (MLPRegressor(**net), False), MLPClassifier(**net)), False)
    else:
        raise ValueError(f"unknown baseline {name!r} (one of {', '.join(BASELINES)})")


def _per_target(fitted, x, mean, std):
    """Predictions (n, n_targets) of one (model, fits raw values) per target on design x."""
    return np.stack([m.predict(x) if raw else m.predict(x) * std[k] + mean[k] for k, (m, raw) in enumerate(fitted)], 1)


class _BiGRU(nn.Module):
    """Bidirectional GRU with one output per regression target and a logit per class."""

    def __init__(self, n_units, hidden, classes):
        super().__init__()
        self.widths = [c or 1 for c in classes]
        self.gru = nn.GRU(n_units, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, sum(self.widths))
        self.scale = None

    def forward(self, x):
        """Per target (…, width): a standardised value or class logits."""
        return self.out(self.gru(x)[0]).split(self.widths, -1)

    def loss(self, outputs, y):
        """Mean squared error or cross-entropy per target over the labelled (non-NaN) bins, summed."""
        total = 0.0
        for k, out in enumerate(outputs):
            ok = ~torch.isnan(y[..., k])
            if not ok.any():
                continue
            if out.shape[-1] == 1:
                total = total + ((out[..., 0] - y[..., k].nan_to_num()) ** 2)[ok].mean()    # NaN-free gradient
            else:
                total = total + nn.functional.cross_entropy(out[ok], y[..., k][ok].long())
        return total

    @torch.no_grad()
    def predict(self, split):
        """Standardised predictions or class labels (n, n_targets) at each sample's bin."""
        x, _ = _padded(split, self.scale)
        cols = [o[..., 0] if o.shape[-1] == 1 else o.argmax(-1).float() for o in self(x)]
        return torch.stack(cols, -1).numpy()[split.interval, split.bin]


def _padded(split, scale):
    """Binned activity of every interval, compressed, scaled and padded into (n_intervals, max_bins, n_units)."""
    compressed = split.compressed()
    n = max(len(c) for c in compressed)
    x = np.zeros((len(compressed), n, compressed[0].shape[1]), dtype=np.float32)
    for k, c in enumerate(compressed):
        x[k, :len(c)] = c / scale
    return torch.from_numpy(x), n


def _fit_gru(train, z, classes, hidden, seed, crop=64, batch=16):
    """Train GRU_STEPS Adam steps on random crops of the training intervals (full-sequence
    prediction afterwards); z: standardised values or class labels per target."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    scale = np.concatenate(train.compressed()).std(0) + 1e-3
    net = _BiGRU(train.binned[0].shape[1], hidden, classes)
    net.scale = scale
    x, n = _padded(train, scale)
    target = torch.full((len(train.binned), n, z.shape[1]), float("nan"))
    target[train.interval, train.bin] = torch.as_tensor(z, dtype=torch.float32)   # last sample of a bin
    lengths = torch.tensor([len(b) for b in train.binned])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(GRU_STEPS):
        k = torch.randint(len(lengths), (batch,), generator=gen)
        start = (torch.rand(batch, generator=gen) * (lengths[k] - crop).clamp(min=0)).long()
        idx = start[:, None] + torch.arange(min(crop, n))
        loss = net.loss(net(x[k[:, None], idx]), target[k[:, None], idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()
