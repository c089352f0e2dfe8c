"""The Wiener filter inside a decoding model, fitted before training.

Each regression target's linear read-out of the window's binned counts (`Neuroformer.wiener`) is
ridge regression on training windows, its penalty chosen on the validation windows, as the ridge
baseline of `neuroformer decode` chooses its own. Training then leaves it fixed: the transformer
starts from the best linear decoder of the window and learns only what it misses.
"""
import numpy as np
import torch
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from .data.windows import collate_windows

ALPHAS = 10.0 ** np.arange(-1, 6)     # ridge penalties tried (standardised counts)
MAX_VALUES = 3e7                      # counts the fit reads at most (memory: 8 bytes each)


def wiener_design(model, dataset, batches, desc=None):
    """Per target, (counts, standardised value) of every target sample in `batches`: a window's
    binned counts repeated for each of its samples."""
    rows = {name: ([], []) for name in model.wiener_targets}
    with torch.no_grad():
        for idx in tqdm(batches, desc=desc, unit="batch", disable=desc is None, leave=False):
            batch = collate_windows([dataset[i] for i in idx])
            counts = model.binned_counts(batch)
            for name, (xs, ys) in rows.items():
                z, mask = model.standardised(batch, name), batch[f"behavior.{name}"]["mask"]
                window, _ = torch.nonzero(mask, as_tuple=True)
                xs.append(counts[window].double().numpy())
                ys.append(z[mask].double().numpy())
    return {name: (np.concatenate(xs), np.concatenate(ys)) for name, (xs, ys) in rows.items()}


def fit_wiener(model, dataset, train_windows, valid_batches, batch_size=32):
    """Fit `model.wiener_weight` / `wiener_bias` in place on `train_windows` (evenly spaced
    ones when they hold more than MAX_VALUES counts allow); returns {target: chosen penalty}."""
    n = int(min(len(train_windows), max(16 * batch_size, MAX_VALUES // model.wiener_weight.shape[0])))
    chosen = [train_windows[i] for i in np.linspace(0, len(train_windows) - 1, n).round().astype(int)]
    batches = [chosen[i:i + batch_size] for i in range(0, n, batch_size)]
    train = wiener_design(model, dataset, batches, "fitting the Wiener filter")
    valid = wiener_design(model, dataset, valid_batches)
    penalties = {}
    for k, name in enumerate(model.wiener_targets):
        (x, y), (xv, yv) = train[name], valid[name]
        if len(y) < 2:                          # nothing to fit: the filter stays zero
            continue
        if len(yv):
            fits = [make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(x, y) for a in ALPHAS]
            best = fits[int(np.argmin([np.mean((f.predict(xv) - yv) ** 2) for f in fits]))]
        else:                                   # no validation sample: leave-one-out on training
            best = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(x, y)
        scaler, ridge = best
        weight = ridge.coef_ / scaler.scale_                         # back to raw counts
        model.wiener_weight[:, k] = torch.as_tensor(weight, dtype=model.wiener_weight.dtype)
        model.wiener_bias[k] = float(ridge.intercept_ - weight @ scaler.mean_)
        penalties[name] = float(ridge.alpha_ if isinstance(ridge, RidgeCV) else ridge.alpha)
    return penalties
