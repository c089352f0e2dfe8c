"""The built-in synthetic recording: deterministic, valid, with the ground truth it promises."""
import json

import numpy as np

from neuroformer.data.recording import open_recording
from neuroformer.data.synthetic import GENERATOR_VERSION, SyntheticConfig, generate
from neuroformer.data.validate import validate_file

from conftest import TINY, check_provenance


def _spikes(data):
    return np.asarray(data.spikes.timestamps), np.asarray(data.spikes.unit_index)


def test_same_seed_same_recording_other_seed_differs():
    (a, _), = generate(SyntheticConfig(**TINY))
    (b, _), = generate(SyntheticConfig(**TINY))
    (c, _), = generate(SyntheticConfig(**{**TINY, "seed": 4}))
    for x, y in zip(_spikes(a), _spikes(b)):
        assert np.array_equal(x, y)
    assert np.array_equal(a.movies.frames, b.movies.frames)
    assert len(_spikes(c)[0]) != len(_spikes(a)[0])


def test_file_is_valid_and_has_the_promised_structure(tiny_synthetic):
    validate_file(tiny_synthetic)
    data = open_recording(tiny_synthetic)
    cfg = SyntheticConfig(**TINY)
    assert len(data.units) == 30 and data.units.id[0] == "synthetic/n0000"
    assert data.movies.__dict__["frames"].shape == (3 * 80, 64, 112)  # 3 movies of 4 s at 20 Hz, stored once
    assert len(data.stimulus) == len(data.trials) == cfg.n_movies * cfg.n_trials + cfg.heldout_trials
    assert sorted(np.unique(data.trials.stimulus_id, return_counts=True)[1]) == [2, 3, 3]
    rate = len(data.spikes.timestamps) / data.domain.end[-1] / 30
    assert 2.5 < rate < 12
    # held-out movies are shown only on test trials
    held = data.trials.stimulus_id >= cfg.n_movies
    for name in ("train", "valid"):
        dom = getattr(data, f"{name}_domain")
        assert not any(np.any((dom.start < e) & (dom.end > s)) for s, e in
                       zip(data.trials.start[held], data.trials.end[held]))
    test = data.test_domain
    assert all(np.any(np.isclose(test.start, s)) for s in data.trials.start[held])
    names = {"running.speed", "eye.phi", "eye.theta"}
    assert names == {f"{g}.{f}" for g in data.behavior.keys() for f in getattr(data.behavior, g).keys()}
    data.file.close()


def test_ground_truth_beside_the_recording(tiny_synthetic):
    truth = np.load(tiny_synthetic.with_suffix(".truth.npz"))
    w, d = truth["coupling"], truth["delays"]
    assert w.shape == (30, 30) and np.all(np.diag(w) == 0)
    assert np.all((d[w != 0] >= 0.002 - 1e-9) & (d[w != 0] <= 0.020 + 1e-9))
    hubs = truth["hubs"]
    assert len(hubs) == 5
    out_degree = (w != 0).sum(0)
    assert out_degree[hubs].min() > np.delete(out_degree, hubs).max()   # hubs dominate the coupling
    assert (w < 0).any() and (w > 0).any()
    assert truth["true_rate"].shape == (len(truth["true_rate_times"]), 30)
    assert str(truth["generator_version"]) == GENERATOR_VERSION
    assert json.loads(str(truth["params"]))["n_neurons"] == 30
    check_provenance(tiny_synthetic.with_suffix(".truth.npz"), TINY["seed"], TINY)


def test_spikes_follow_the_true_rates(tiny_synthetic):
    """Per-neuron spike counts correlate with the integrated true (uncoupled) rates."""
    truth = np.load(tiny_synthetic.with_suffix(".truth.npz"))
    data = open_recording(tiny_synthetic)
    counts = np.bincount(data.spikes.unit_index, minlength=30)
    expected = truth["true_rate"].sum(0) / 20.0
    assert np.corrcoef(counts, expected)[0, 1] > 0.8
    data.file.close()


def test_sessions_share_one_population():
    cfg = SyntheticConfig(**{**TINY, "sessions": 2, "n_trials": 3})
    (a, ta), (b, tb) = generate(cfg)
    assert a.units.id[0].startswith("synthetic-s0/") and b.units.id[0].startswith("synthetic-s1/")
    shared = np.intersect1d(ta["population_index"], tb["population_index"])
    assert 0 < len(shared) < 30
    ia = np.searchsorted(ta["population_index"], shared)
    ib = np.searchsorted(tb["population_index"], shared)
    assert np.allclose(ta["rf_x"][ia], tb["rf_x"][ib])           # same neurons, same receptive fields
    assert np.allclose(ta["coupling"][np.ix_(ia, ia)], tb["coupling"][np.ix_(ib, ib)])
