"""Raised-cosine lag bases (Pillow et al. 2008): the temporal filters of the Poisson GLM and of
the model's own coupling term, in one place so both filter spike history the same way."""
import math

import numpy as np


def raised_cosines(n, first, last):
    """(n, last + 1) raised-cosine bumps over lags first..last bins, log-stretched so early lags
    are resolved finely; lags below `first` are zero."""
    lags = np.arange(last + 1, dtype=np.float64)
    x = np.log(lags + 1.0)
    centres = np.linspace(math.log(first + 1.0), math.log(last + 1.0), n)
    width = (centres[1] - centres[0]) if n > 1 else x[-1] - x[first] + 1
    arg = np.clip((x[None, :] - centres[:, None]) * math.pi / (2 * width), -math.pi, math.pi)
    bases = 0.5 * (1 + np.cos(arg))
    bases[:, :first] = 0.0
    return bases
