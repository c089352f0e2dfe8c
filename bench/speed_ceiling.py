"""How well can running speed be read from the synthetic recording at all? Bayes decoders that
know the generator score the same test samples as `neuroformer decode`.

The generator scales each neuron's rate by (1 + a_i * speed / 20) / norm_i and drives it by the
movie (truth file: `true_rate` on a 50 ms grid, and `speed_gain` a_i). Every decoder here knows
a_i, the generator's prior on speed (8 softplus(2x), x an Ornstein-Uhlenbeck process, tau 3 s,
std 1, discretised on a grid of x) and a per-neuron scale c_i fitted on the training split (the
recurrent coupling adds spikes the rate leaves out); they differ in what they know of the
stimulus-driven rate R_ik of neuron i in 50 ms bin k:

- generator: the true R_ik (true_rate / speed factor; the movie and the gaze's shift of it);
- movie average: the mean response of the training trials of the same movie, bin by bin (what a
  model that learned the training movies could know; on held-out movies, the neuron's mean);
- counts only: nothing; R_ik is a gamma variable with each neuron's mean and spread of R over
  the training split, so counts are negative binomial.

Forward-backward over each whole test trial gives the posterior mean speed per bin: both sides
of every sample and the trial's full length, more than any decoder here sees. Bins are taken as
independent given speed, which the movie's slow drive is not, so these are approximate ceilings.
With --window each sample is decoded from only the bins its model window covers (in
configs/decoding.yaml 0.3 s before it to 0.25 s after it): is the models' gap their short view, or
what they know of the drive?

    python bench/speed_ceiling.py --data syn40.h5 -o ceiling.json       # about 1.5 min
    python bench/speed_ceiling.py --data syn40.h5 --window -o local.json # about 4 min
"""
import argparse
import functools
from pathlib import Path

import numpy as np
from scipy.special import gammaln, logsumexp
from scipy.stats import norm

from neuroformer.assembly import window_spec
from neuroformer.config import load_config
from neuroformer.data.recording import open_recording
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.decoding import decode_config, decode_samples, novel_stimulus, scores
from neuroformer.plots import subplots
from neuroformer.provenance import write_result

TAU, STD = 3.0, 1.0                       # the generator's OU prior on x (speed = 8 softplus(2x))
GRID = np.linspace(-4.0, 4.0, 161)
DECODERS = ("generator", "movie average", "counts only")


def speed_of(x):
    return 8.0 * np.logaddexp(0.0, 2.0 * x)


def log_likelihood(counts, rate, gains, dt, shape=None):
    """log P(counts of bin k | x on the grid), (K, G): Poisson of mean rate * gain * dt, or
    negative binomial of per-neuron `shape` (a gamma-distributed rate of that mean)."""
    m = rate[:, None, :] * gains[None] * dt                                       # (K, G, N)
    n = counts[:, None, :]
    if shape is None:
        return (n * np.log(m) - m).sum(-1)
    k = shape
    return (gammaln(n + k) - gammaln(k) + k * np.log(k / (k + m)) + n * np.log(m / (k + m))).sum(-1)


@functools.cache
def log_transition(dt):
    """log P(x_k+1 | x_k) on the grid (G, G): the OU prior over one bin of `dt` s."""
    a = np.exp(-dt / TAU)
    log_trans = norm.logpdf(GRID[None, :], a * GRID[:, None], STD * np.sqrt(1 - a * a))
    return log_trans - logsumexp(log_trans, 1, keepdims=True)


def forward_backward(loglik, dt):
    """Posterior over the grid of x per bin (K, G), given every bin of `loglik` (K, G)."""
    log_trans = log_transition(dt)
    fwd = np.empty_like(loglik)
    fwd[0] = norm.logpdf(GRID, 0.0, STD) + loglik[0]
    for k in range(1, len(fwd)):
        fwd[k] = logsumexp(fwd[k - 1][:, None] + log_trans, 0) + loglik[k]
    bwd = np.zeros_like(loglik)
    for k in range(len(bwd) - 2, -1, -1):
        bwd[k] = logsumexp(log_trans + (loglik[k + 1] + bwd[k + 1])[None, :], 1)
    post = fwd + bwd
    return np.exp(post - logsumexp(post, 1, keepdims=True))


def posterior_speed(loglik, dt, span=None):
    """Posterior mean speed per bin of one trial, from every bin of the trial or, with
    span = (before, after), from bins k - before .. k + after - 1 only (what one model window sees)."""
    if span is None:
        return forward_backward(loglik, dt) @ speed_of(GRID)
    before, after = span
    post = [forward_backward(loglik[max(0, k - before):k + after], dt)[min(k, before)] for k in range(len(loglik))]
    return np.array(post) @ speed_of(GRID)


def ceiling(data_path, truth_path, config, window=False):
    """Per decoder of DECODERS, valid and test r / R² (test also on seen and novel movies), and
    the test prediction; and the test samples. `window`: each sample from the spikes of its model
    window only (the config's history + current, read `target_lag` before the window's end)."""
    data = open_recording(data_path)
    truth = np.load(truth_path)
    grid_t, true_rate, a = truth["true_rate_times"], truth["true_rate"].astype(float), truth["speed_gain"]
    dt = float(grid_t[1] - grid_t[0])
    speed_all = np.asarray(data.behavior.running.speed, dtype=float)
    speed_t = np.asarray(data.behavior.running.timestamps, dtype=float)
    speed_norm = (1 + a[None] * speed_all[:, None] / 20.0).mean(0)
    gain = lambda s: (1 + a[None] * np.asarray(s)[:, None] / 20.0) / speed_norm           # (n, N)
    speed_on_grid = speed_all[np.minimum(np.searchsorted(speed_t, grid_t + 1e-9) - 1, len(speed_all) - 1)]
    stim_rate = true_rate / gain(speed_on_grid)                                            # R, (K, N)

    times = np.asarray(data.spikes.timestamps, dtype=float)
    counts = np.zeros_like(true_rate)
    np.add.at(counts, (np.minimum((times / dt).astype(int), len(grid_t) - 1), np.asarray(data.spikes.unit_index)), 1)

    cfg = decode_config(load_config(config), data, ["running.speed"])
    spec = window_spec(cfg)
    samples = decode_samples(data, ["running.speed"], spec, data_path)
    span = (round((spec.history + spec.current - spec.target_lag) / dt), round(spec.target_lag / dt)) if window else None

    def bins(start, end):
        return np.flatnonzero((grid_t >= start) & (grid_t < end))

    def bins_of(split):
        dom = getattr(data, f"{split}_domain")
        return [bins(s, e) for s, e in zip(dom.start, dom.end)]

    train = np.concatenate(bins_of("train"))
    scale = counts[train].sum(0) / (stim_rate[train] * gain(speed_on_grid[train]) * dt).sum(0)
    mean, spread = stim_rate[train].mean(0), stim_rate[train].std(0)
    shape = (mean / spread) ** 2

    # the training trials' mean stimulus-driven rate per movie, bin by bin from trial onset
    t_start, t_end = np.asarray(data.trials.start, dtype=float), np.asarray(data.trials.end, dtype=float)
    movie = np.asarray(data.trials.stimulus_id)
    in_train = np.isin(np.searchsorted(t_start, grid_t[train], side="right") - 1, np.arange(len(t_start)))
    trial_of_train_bin = np.searchsorted(t_start, grid_t[train][in_train], side="right") - 1
    n_bins = min(len(bins(s, e)) for s, e in zip(t_start, t_end))
    average = {}
    for m in np.unique(movie[np.unique(trial_of_train_bin)]):
        trials = [j for j in np.unique(trial_of_train_bin) if movie[j] == m]
        average[m] = np.mean([stim_rate[bins(t_start[j], t_end[j])[:n_bins]] for j in trials], 0)

    def loglik(name, rows):
        if name == "generator":
            return log_likelihood(counts[rows], scale * stim_rate[rows], gains, dt)
        j = np.searchsorted(t_start, grid_t[rows[0]], side="right") - 1
        if name == "movie average" and movie[j] in average:
            psth = average[movie[j]]
            return log_likelihood(counts[rows], scale * psth[np.minimum(np.arange(len(rows)), n_bins - 1)], gains, dt)
        return log_likelihood(counts[rows], np.broadcast_to(scale * mean, (len(rows), len(mean))), gains, dt, shape)

    gains = gain(speed_of(GRID))
    evidence = f"bins k-{span[0]} .. k+{span[1] - 1} of sample k" if span else "whole trial"
    novel = novel_stimulus(data, samples["test"])
    out = {}
    for name in DECODERS:
        result = {}
        for split in ("valid", "test"):
            s = samples[split]
            pred = np.full(len(s.times), np.nan)
            for k, rows in enumerate(bins_of(split)):
                mine = s.interval == k
                if mine.any():
                    post = posterior_speed(loglik(name, rows), dt, span)
                    pred[mine] = post[np.clip(((s.times[mine] - grid_t[rows[0]]) / dt).astype(int), 0, len(rows) - 1)]
            r, r2 = scores(pred[:, None], s.values)
            result[split] = {"r": r[0], "r2": r2[0], "samples": len(pred), "evidence": evidence}
            if split == "test" and novel is not None:
                for kind, rows in (("seen", ~novel), ("novel", novel)):
                    result[split][f"r_{kind}_movies"] = scores(pred[rows, None], s.values[rows])[0][0]
            result[f"_{split}_prediction"] = pred
        out[name] = result
    return out, samples["test"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="synthetic recording; its truth file (.truth.npz) beside it")
    p.add_argument("--config", type=Path, default=Path(__file__).parents[1] / "configs" / "decoding.yaml",
                   help="decoding config whose windows define the scored samples")
    p.add_argument("--window", action="store_true",
                   help="each sample from the spikes its model window sees, not from its whole trial")
    p.add_argument("--quick", action="store_true", help="a small recording made in --workdir (a test runs this)")
    p.add_argument("--workdir", type=Path, default=Path("."))
    p.add_argument("-o", "--out", required=True, type=Path, help="JSON of the scores; a .png of test traces beside it")
    args = p.parse_args(argv)
    if args.quick:
        quick = SyntheticConfig(n_neurons=40, n_trials=3, trial_length=5.0)
        args.data = write_synthetic(args.workdir / "ceiling_quick.h5", quick)[0]
    elif args.data is None:
        p.error("--data is required (or --quick)")
    result, test = ceiling(args.data, args.data.with_suffix(".truth.npz"), args.config, args.window)
    fig, ax = subplots(figsize=(10, 3))
    first = test.interval == test.interval[0]
    ax.plot(test.times[first], test.values[first, 0], "k", label="true speed")
    for name, res in result.items():
        ax.plot(test.times[first], res["_test_prediction"][first], label=f"{name} (test r {res['test']['r']:.3f})")
    ax.set(xlabel="time (s)", ylabel="speed (cm/s)", title="Bayes decoders that know the generator: first test trial")
    ax.legend(fontsize=8)
    fig.savefig(args.out.with_suffix(".png"), dpi=120, bbox_inches="tight")
    public = {name: {k: v for k, v in res.items() if not k.startswith("_")} for name, res in result.items()}
    write_result(args.out, public, vars(args))
    for name, res in public.items():
        t = res["test"]
        print(f"{name}: valid r {res['valid']['r']:.4f}, test r {t['r']:.4f} (R² {t['r2']:.3f}); "
              f"seen / novel movies {t.get('r_seen_movies', float('nan')):.3f} / {t.get('r_novel_movies', float('nan')):.3f}")


if __name__ == "__main__":
    main()
