"""Gaussian smoothing of decoded traces, and the validation score by which every decoder's
settings are chosen: Pearson r after the best of these smoothings (a decoder is judged by the trace
it gives once smoothed, so a noisier but less shrunk read-out is not counted against)."""
import numpy as np
from scipy.ndimage import gaussian_filter1d

SMOOTHING = (0, 1, 2, 4, 8, 16, 32, 64)          # Gaussian widths tried, in samples


def smooth(pred, segment, width):
    """pred (n, ...) smoothed by a Gaussian of `width` samples (0: none) within each run of rows
    with the same `segment` label (n,), rows in time order (a trace is not smoothed across a gap)."""
    if width == 0:
        return pred
    out = pred.copy()
    for k in np.unique(segment):
        rows = segment == k
        out[rows] = gaussian_filter1d(pred[rows], width, axis=0, mode="nearest")
    return out


def pearson(pred, y):
    """Pearson r of two (n,) arrays; 0 where either is constant."""
    return float(np.corrcoef(pred, y)[0, 1]) if pred.std() > 0 and y.std() > 0 else 0.0


def smoothed_r(pred, y, segment):
    """The best Pearson r of `pred` (n,) against y over the SMOOTHING widths, and that width."""
    return max((pearson(smooth(pred, segment, w), y), w) for w in reversed(SMOOTHING))
