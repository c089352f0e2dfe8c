"""Counter-based random draws for simulation: batch-invariant and computed for all rows at once.

Every simulated (seed, trial, repeat) is a row with a 64-bit key (`simulations.trial_seed`); its
n-th uniform draw is the n-th output of SplitMix64 (Steele, Lea & Flood 2014) seeded with that key,
a function of (key, n) alone. A row therefore draws the same numbers whichever rows share its
batch, and a batch's draws are a few vectorised integer operations instead of one generator
object per row.
"""
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def splitmix64(keys, counts):
    """The `counts`-th (0-based) SplitMix64 outputs of seeds `keys` (uint64 arrays)."""
    with np.errstate(over="ignore"):
        z = np.asarray(keys, np.uint64) + (np.asarray(counts, np.uint64) + np.uint64(1)) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * MIX[0]
        z = (z ^ (z >> np.uint64(27))) * MIX[1]
    return z ^ (z >> np.uint64(31))


class Draws:
    """Uniform draws in [0, 1) for rows with 64-bit `keys`, each row counting its own draws."""

    def __init__(self, keys):
        self.keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        self.counts = np.zeros(len(self.keys), dtype=np.uint64)

    def __len__(self):
        return len(self.keys)

    def uniform(self, rows):
        """float64 (len(rows),): the next draw of each row of `rows` (indices, no repeats); only
        their counters advance."""
        rows = np.asarray(rows, dtype=np.int64)
        bits = splitmix64(self.keys[rows], self.counts[rows]) >> np.uint64(11)          # 53 random bits
        self.counts[rows] += np.uint64(1)
        return bits * 2.0 ** -53

    def uniforms(self, n):
        """float64 (rows, n): the next n draws of every row."""
        bits = splitmix64(self.keys[:, None], self.counts[:, None] + np.arange(n, dtype=np.uint64)) >> np.uint64(11)
        self.counts += np.uint64(n)
        return bits * 2.0 ** -53

    def poisson(self, rates, cap):
        """One count per row and column of `rates` (B, N) (`poisson_counts`); each row's draws
        advance its counter by N."""
        return poisson_counts(rates, self.uniforms(np.shape(rates)[1]), cap)


def poisson_counts(rates, u, cap):
    """Poisson counts of `rates` capped at `cap` (the cap takes the tail's probability), by
    inverse CDF of the uniforms `u` (one per rate, same shape)."""
    rates = np.asarray(rates, dtype=np.float64)
    if not (rates >= 0).all():
        raise ValueError("Poisson rates must be >= 0 (got NaN or a negative rate)")
    if cap == 1:                                                           # the same numbers, fewer operations
        return (u >= np.exp(-rates)).astype(np.int64)
    rates = np.minimum(rates, 1e300)                                       # an infinite rate draws the cap
    k = np.arange(cap, dtype=np.float64)                                   # counts below the cap
    log_pmf = k * np.log(np.maximum(rates, 1e-300))[..., None] - rates[..., None] - _log_factorial(cap)
    cdf = np.cumsum(np.exp(log_pmf), -1)                                   # P(count <= k), k < cap
    return (u[..., None] >= cdf).sum(-1)


def _log_factorial(n):
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n)))])
