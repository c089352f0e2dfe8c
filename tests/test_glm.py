"""The Poisson GLM baseline estimates what it claims: known weights from data drawn by a known
GLM, the same solution as scikit-learn's PoissonRegressor, a warning when L-BFGS stops short,
a recording's coupling from spikes alone, and closed-loop rollouts drawn from the fitted rates."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import PoissonRegressor
from sklearn.metrics import roc_auc_score

from neuroformer.connectivity import glm_coupling
from neuroformer.data.circuits import HubCircuitConfig, hub_circuit
from neuroformer.data.recording import open_recording, spike_counts
from neuroformer.data.synthetic import write_with_truth
from neuroformer.draws import Draws, poisson_counts
from neuroformer.glm import GLM_STREAM, ConvergenceWarning, GLMConfig, PoissonGLM, _lbfgs, lag_filter
from neuroformer.simulations import trial_seed


@pytest.fixture(autouse=True)
def one_thread():
    """These fits and the GLM's closed-loop check multiply small tensors many times: on a busy
    machine, waking a second thread for each costs more than the product."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def known_glm(n_bins, n_features, n_units, seed):
    """A design x (T, F), the true weights (F, N) and biases (N,), and Poisson counts y (T, N)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_bins, n_features)).astype(np.float32)
    weight = rng.normal(0.0, 0.4, (n_features, n_units))
    bias = np.log(rng.uniform(0.1, 0.4, n_units))
    y = rng.poisson(np.exp(x @ weight + bias)).astype(np.float32)
    return torch.as_tensor(x), weight, bias, torch.as_tensor(y)


def fit(x, y, penalty, max_iter):
    """`_lbfgs` from the starting point `PoissonGLM.fit` uses (zero weights, log mean rate)."""
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.log(y.mean(0) + 1e-8).clone().requires_grad_(True)
    _lbfgs(x, y, weight, bias, penalty, max_iter)
    return weight.detach().numpy(), bias.detach().numpy()


def test_recovers_the_weights_of_a_known_glm():
    x, weight, bias, y = known_glm(20_000, 5, 3, seed=0)
    w_fit, b_fit = fit(x, y, penalty=1e-6, max_iter=100)
    design = np.hstack([x.numpy(), np.ones((len(x), 1))]).astype(np.float64)
    for unit in range(y.shape[1]):
        rate = np.exp(design @ np.append(weight[:, unit], bias[unit]))
        stderr = np.sqrt(np.diag(np.linalg.inv(design.T @ (design * rate[:, None]))))   # inverse Fisher information
        error = np.append(w_fit[:, unit], b_fit[unit]) - np.append(weight[:, unit], bias[unit])
        assert np.all(np.abs(error) < 4 * stderr), error / stderr


def test_agrees_with_sklearn_poisson_regressor():
    """Ours: sum(exp(eta) - y eta) / S + p |W|^2 / 2, with S the spikes of all units; sklearn's,
    per unit: mean(exp(eta) - y eta) + alpha |w|^2 / 2 (+ a constant). Over T bins they are the
    same objective up to the factor S / T when alpha = p S / T. Both in float64 with Newton's
    method for sklearn: the comparison is of objectives, not of float32 stopping points."""
    x, _, _, y = known_glm(5_000, 4, 3, seed=1)
    x, y = x.double(), y.double()
    penalty = 0.05
    w_fit, b_fit = fit(x, y, penalty, max_iter=200)
    alpha = penalty * float(y.sum()) / len(y)
    for unit in range(y.shape[1]):
        ref = PoissonRegressor(alpha=alpha, solver="newton-cholesky", tol=1e-12, max_iter=1000).fit(
            x.numpy(), y[:, unit].numpy())
        np.testing.assert_allclose(w_fit[:, unit], ref.coef_, atol=2e-4)
        np.testing.assert_allclose(b_fit[unit], ref.intercept_, atol=2e-4)
        naive = PoissonRegressor(alpha=penalty, tol=1e-10, max_iter=1000).fit(x.numpy(), y[:, unit].numpy())
        assert np.abs(naive.coef_ - ref.coef_).max() > 1e-2      # the penalty matters at this size


def test_warns_when_lbfgs_stops_short():
    x, _, _, y = known_glm(5_000, 4, 3, seed=2)
    with pytest.warns(ConvergenceWarning, match="max_iter 1"):
        fit(x, y, penalty=1e-3, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fit(x, y, penalty=1e-3, max_iter=100)


def test_fitted_coupling_follows_a_known_circuit(tmp_path):
    """End to end on a recording: spikes of a hub circuit (a network whose only correlations come
    from its known coupling W[target, source]) -> `PoissonGLM.fit` -> the integrated coupling
    kernels, which must follow the true connections."""
    data, truth = hub_circuit(HubCircuitConfig(n_neurons=12, n_hubs=2, duration=150.0))
    path = write_with_truth(tmp_path / "hub.h5", data, truth)
    glm = PoissonGLM.fit(path, GLMConfig(history=0.02, max_iter=50), progress=False, stable_seconds=1.0)
    coupling, true = glm_coupling(glm), truth["coupling"]
    off = ~np.eye(len(true), dtype=bool)
    assert np.corrcoef(coupling[off], true[off])[0, 1] > 0.7                 # 0.85 at this seed
    assert roc_auc_score(true[off] != 0, np.abs(coupling[off])) > 0.85       # the connections stand out: 0.95
    whole = glm_coupling(glm, lags=(0.0, 1.0))                              # every lag of the kernels
    np.testing.assert_allclose(whole, coupling)
    early = glm_coupling(glm, lags=(0.001, 0.005))
    expected = np.einsum("sbt,b->ts", (glm.weight[-glm.n_history_features:] / glm.std[-glm.n_history_features:, None])
                         .numpy().reshape(len(true), -1, len(true)), glm.hist_kernel[:, 1:6].sum(1))
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(early, expected, rtol=1e-6)
    trials = {"index": np.array([0, 1]), "start": np.array([10.0, 20.0]), "end": np.array([12.0, 21.0]),
              "stimulus_id": np.array([-1, -1])}
    with open_recording(path) as data:                  # closed loop: a (trial, repeat)'s spikes are its own
        together = glm.simulate(data, trials, 2, seed=3, progress=False)
        alone = glm.simulate(data, {k: v[1:] for k, v in trials.items()}, 2, seed=3, progress=False)
    assert len(alone.timestamps) > 10 and alone.timestamps.max() < 21.0
    for r in (0, 1):
        assert np.array_equal(together.spikes_of(1, r)[0], alone.spikes_of(1, r)[0])


def test_a_rollout_draws_each_bin_from_the_rates_of_its_own_history(tiny_synthetic, monkeypatch):
    """Closed loop against the fitting path: every bin's simulated counts are the capped Poisson
    draws (the row's uniforms) of the rates `log_rate` gives to the features of its trial (a
    behaviour input) and the `lag_filter` features of the recorded activity before the trial and
    the simulated spikes since. A GLM in float64 with strong coupling, standardised features, a
    cap of 2 and trials of two lengths; rolled out all rows at once or one at a time, drawing
    many bins' uniforms at once or two."""
    import neuroformer.glm as glm_module
    cfg, rng = GLMConfig(history=0.01, max_count=2), np.random.default_rng(0)
    with open_recording(tiny_synthetic) as rec:
        n = len(rec.units.id)
        f = 1 + n * cfg.history_bases
        glm = PoissonGLM(cfg, rec.units.id.astype(str), ["running.speed"], None, torch.tensor(rng.uniform(0, 0.3, f)),
                         torch.tensor(rng.uniform(0.5, 2.0, f)), torch.tensor(rng.normal(0, 0.6, (f, n))),
                         torch.tensor(np.log(rng.uniform(0.005, 0.05, n))), 0.0)
        glm.weight[0] = torch.tensor(rng.normal(0, 2.0, n))                 # a strong behaviour input
        start = np.asarray(rec.trials.start[:2], dtype=float)
        trials = {"index": np.array([0, 1]), "start": start, "end": start + [1.0, 0.4], "stimulus_id": np.array([-1, -1])}
        sim = glm.simulate(rec, trials, 2, seed=4, progress=False)
        monkeypatch.setattr(glm_module, "GLM_BYTES", 1)                  # one row at a time, ...
        monkeypatch.setattr(glm_module, "DRAWN_AT_ONCE", 2 * n + 1)         # ... drawing 2 bins at once
        alone = glm.simulate(rec, trials, 2, seed=4, progress=False)
        assert np.array_equal(sim.timestamps, alone.timestamps) and np.array_equal(sim.unit_index, alone.unit_index)
        b, lags, doubles = cfg.bin, glm.hist_kernel.shape[1] - 1, 0
        for i, (s, e) in enumerate(zip(trials["start"], trials["end"])):
            T, k0 = int(round((e - s) / b)), int(round(s / b))
            for r in range(2):
                times, units = sim.spikes_of(i, r)
                counts = np.zeros((T, n), dtype=np.int64)
                np.add.at(counts, (np.round(times / b - 0.5).astype(int) - k0, units), 1)
                history = np.concatenate([spike_counts(rec, (k0 - lags) * b, k0 * b, b), counts])
                features = np.concatenate([glm.external_features(rec, s, e), lag_filter(history, glm.hist_kernel)], 1)
                rate = glm.log_rate(features).exp().clamp(max=2).numpy()
                u = Draws([trial_seed(4, i, r) ^ GLM_STREAM]).uniforms(T * n).reshape(T, n)
                assert counts.sum() > 20
                assert np.array_equal(counts, poisson_counts(rate, u, 2))
                doubles += (counts == 2).sum()
    assert doubles > 0
