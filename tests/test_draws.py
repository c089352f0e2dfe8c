"""Counter-based draws: SplitMix64's published outputs, rows independent of their batch,
uniform and capped-Poisson distributions against scipy."""
import numpy as np
from scipy import stats

from neuroformer.draws import Draws, splitmix64


def test_splitmix64_gives_the_reference_sequence():
    # the first outputs of Vigna's splitmix64.c seeded with 1234567
    expected = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431]
    assert splitmix64(np.full(4, 1234567, np.uint64), np.arange(4)).tolist() == expected


def test_a_rows_draws_depend_on_its_key_and_count_only():
    together = Draws([7, 8, 9])
    first = together.uniform([0, 2])
    second = together.uniform([0, 1, 2])
    assert second[1] == Draws([8]).uniform([0])[0]          # row 8 drew nothing the first time
    assert first[0] == _nth(7, 0) and second[0] == _nth(7, 1)
    assert together.counts.tolist() == [2, 1, 2]


def _nth(key, n):
    return float(splitmix64(np.array([key], np.uint64), np.array([n]))[0] >> np.uint64(11)) * 2.0 ** -53


def test_uniform_and_poisson_draws_have_their_distributions():
    draws = Draws(np.arange(2000))
    u = np.concatenate([draws.uniform(np.arange(2000)) for _ in range(10)])
    assert stats.kstest(u, "uniform").pvalue > 1e-3 and u.min() >= 0 and u.max() < 1
    rates = np.tile([0.05, 0.7, 3.0], (2000, 1))
    for cap in (4, 1):                                                  # (1 has its own code)
        counts = np.concatenate([draws.poisson(rates, cap=cap) for _ in range(5)])
        for j, lam in enumerate(rates[0]):
            expected = np.append(stats.poisson.pmf(np.arange(cap), lam), stats.poisson.sf(cap - 1, lam))  # the cap takes the tail
            observed = np.bincount(counts[:, j], minlength=cap + 1)
            assert counts[:, j].max() <= cap
            keep = expected * len(counts) > 5
            chi2 = stats.chisquare(observed[keep], expected[keep] / expected[keep].sum() * observed[keep].sum())
            assert chi2.pvalue > 1e-3


def test_a_block_of_draws_is_the_draws_one_at_a_time():
    block = Draws([5, 6]).uniforms(3)
    one_by_one = Draws([5, 6])
    assert np.array_equal(block, np.stack([one_by_one.uniform([0, 1]) for _ in range(3)], 1))


def test_poisson_refuses_nan_rates_and_gives_the_cap_for_infinite_ones():
    import pytest
    for cap in (3, 1):
        assert Draws([1, 2]).poisson(np.array([[np.inf, 0.0], [1e300, 0.0]]), cap=cap).tolist() == [[cap, 0], [cap, 0]]
        with pytest.raises(ValueError, match="NaN"):
            Draws([1]).poisson(np.array([[np.nan]]), cap=cap)
