"""The generator's own held-out bits/spike: the ceiling of `neuroformer score` on a recording
the package made, where the true spike probability of every 1 ms step is known.

The synthetic recording and the hub circuit are conditionally Bernoulli per 1 ms step
(neuroformer/data/synthetic.py): p_i(t) = min(min(base_i(t) dt, 0.9) exp(min(c_i(t), 2)), 1)
with c_i the coupling input from the recorded spikes (each spike of j adds W_ij at its delay,
decaying with 5 ms). This script rebuilds p from the ground-truth file and scores the test
split's spikes exactly as `score` does (same trials, same rows, same null: each unit's
homogeneous training-split rate on the 1 ms grid). Any model's bits/spike is below these
figures up to estimation noise.

    python bench/likelihood_ceiling.py --data syn.h5 -o ceiling_syn.json     # ~1 min
    python bench/likelihood_ceiling.py --data hub.h5 -o ceiling_hub.json

With `--normalisations` (synthetic recording) the receptive fields stay the true ones but each
movie's drive is standardised by statistics a causal model could have, instead of that whole
movie's own: the training movies' pooled statistics ("pooled"), or running statistics of the
presentation so far ("running": exponentially weighted over 3 s, shrunk towards the pooled ones
with the weight of 3 s of frames). What separates those rows is what adapting to a new movie is
worth to a model that knows the fields.
"""
import argparse
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from neuroformer.data.recording import behavior_values, movie_frame_dataset, open_recording, spike_counts
from neuroformer.data.synthetic import KERNEL_TAU, STEP, rf_drive
from neuroformer.evaluate import stimulus_groups
from neuroformer.provenance import write_result
from neuroformer.rollouts import select_trials
from neuroformer.scoring import bits_per_spike, poisson_log_likelihood, training_rates

LEAD = 0.2          # s of spikes before a trial that still reach its coupling input (delay + 30 tau)


def coupling_input(data, truth, start, end):
    """c (steps, N): the generator's coupling input on the steps of [start, end) from recorded spikes."""
    w, delays = truth["coupling"], np.round(truth["delays"] / STEP).astype(int)
    k0, k1 = int(round((start - LEAD) / STEP)), int(round(end / STEP))
    t, u = np.asarray(data.spikes.timestamps), np.asarray(data.spikes.unit_index)
    keep = (t >= k0 * STEP) & (t < k1 * STEP)
    steps, units = np.floor(t[keep] / STEP).astype(int) - k0, u[keep]
    arrivals = np.zeros((k1 - k0 + int(delays.max()) + 1, w.shape[0]))
    for target in range(w.shape[0]):
        src = np.flatnonzero(w[target])
        hit = np.isin(units, src)
        np.add.at(arrivals[:, target], steps[hit] + delays[target, units[hit]], w[target, units[hit]])
    c = lfilter([1.0], [1.0, -np.exp(-STEP / KERNEL_TAU)], arrivals[:k1 - k0], axis=0)
    return c[int(round(LEAD / STEP)):]


RUNNING_TAU = 3.0     # s, the running statistics' time constant ("running" normalisation)
PRIOR = 3.0           # s of frames' weight of the pooled statistics they are shrunk towards


def stimulus_drive(data, truth):
    """The synthetic generator's receptive-field drive (frames, N) on its frame grid, rebuilt from
    the recording's movies, presentations and gaze and the truth's fields, and the movie shown
    on each grid frame (-1: grey)."""
    grid_t = truth["true_rate_times"]
    rate = 1.0 / (grid_t[1] - grid_t[0])
    frames, table = movie_frame_dataset(data), data.movie_table
    screen = np.full((len(grid_t), *frames.shape[1:]), 128, np.uint8)
    shown = np.full(len(grid_t), -1)
    for start, m in zip(np.asarray(data.stimulus.start), np.asarray(data.stimulus.movie_index)):
        k0, f0, n = int(round(start * rate)), int(table.first_frame[m]), int(table.n_frames[m])
        screen[k0:k0 + n], shown[k0:k0 + n] = frames[f0:f0 + n], m
    phi, theta = behavior_values(data, "eye.phi"), behavior_values(data, "eye.theta")
    sample = np.minimum((grid_t * float(data.behavior.eye.sampling_rate)).astype(int), len(phi) - 1)
    fields = {k: truth[k] for k in ("rf_x", "rf_y", "rf_sigma", "surround_scale", "surround_weight", "polarity")}
    return rf_drive(screen, phi[sample], theta[sample], fields), shown


def stimulus_gains(data, truth):
    """Stimulus gain (frames, N) per normalisation of the drive: "generator" (each movie's own
    statistics, as generated), "pooled" and "running" (see the module docstring). Grey frames
    keep the generator's gain."""
    drive, shown = stimulus_drive(data, truth)
    beta, rate = truth["beta"], 1.0 / (truth["true_rate_times"][1] - truth["true_rate_times"][0])
    training = np.isin(shown, [m for m, name in enumerate(data.movie_table.id) if str(name).startswith("train")])
    mu, sd = drive[training].mean(0), drive[training].std(0) + 1e-6
    gains = {"generator": np.empty_like(drive)}
    for m in np.unique(shown[shown >= 0]):                           # as data/synthetic.py's _adapted_gain
        on = shown == m
        g = np.exp(beta * (drive[on] - drive[on].mean(0)) / (drive[on].std(0) + 1e-6))
        gains["generator"][on] = g / g.mean(0)
        if m == 0:
            grey = np.exp(beta * (0.0 - drive[on].mean(0)) / (drive[on].std(0) + 1e-6)) / g.mean(0)
    decay, prior = np.exp(-1.0 / (RUNNING_TAU * rate)), PRIOR * rate
    z_run = (drive - mu) / sd
    onsets = np.flatnonzero((shown >= 0) & (np.r_[-1, shown[:-1]] < 0))
    for k0 in onsets:                                                # each presentation from its onset
        k1 = k0 + int(np.argmax(np.r_[shown[k0:], -1] < 0))
        s1, s2, w = 0.0, 0.0, 0.0
        for k in range(k0, k1):
            s1, s2, w = decay * s1 + drive[k], decay * s2 + drive[k] ** 2, decay * w + 1
            m_k = (s1 + prior * mu) / (w + prior)
            v_k = (s2 + prior * (sd ** 2 + mu ** 2)) / (w + prior) - m_k ** 2
            z_run[k] = (drive[k] - m_k) / np.sqrt(np.maximum(v_k, 1e-12))
    for name, z in (("pooled", (drive - mu) / sd), ("running", z_run)):
        g = np.exp(beta * z)
        gains[name] = g / g[training].mean(0)
    for g in gains.values():
        g[shown < 0] = grey
    return gains


def base_rate(data, truth, start, end, stim_gain=None):
    """base (steps, N) in Hz on the steps of [start, end): the baseline rate of a circuit, or the
    synthetic recording's stimulus x running gain (its stimulus gain recovered from `true_rate`,
    or `stim_gain` (frames, N) on the generator's frame grid)."""
    n_steps = int(round(end / STEP)) - int(round(start / STEP))
    if "baseline_rate" in truth:
        return np.broadcast_to(truth["baseline_rate"], (n_steps, len(truth["baseline_rate"])))
    speed = behavior_values(data, "running.speed")
    rate_hz = float(data.behavior.running.sampling_rate)

    def speed_gain(times):
        s = speed[np.minimum((times * rate_hz).astype(int), len(speed) - 1)]
        return (1 + truth["speed_gain"] * s[:, None] / 20.0) / norm

    norm = (1 + truth["speed_gain"][None, :] * speed[:, None] / 20.0).mean(0)
    grid_t = truth["true_rate_times"]
    frame_rate = 1.0 / (grid_t[1] - grid_t[0])
    if stim_gain is None:
        stim_gain = truth["true_rate"] / (truth["target_rate"] * speed_gain(grid_t))
    t = (int(round(start / STEP)) + np.arange(n_steps)) * STEP
    frame = np.clip(((t[:, None] - truth["latency"][None, :]) * frame_rate).astype(int), 0, len(grid_t) - 1)
    return truth["target_rate"] * np.take_along_axis(stim_gain, frame, 0) * speed_gain(t)


def step_probabilities(data, truth, start, end, stim_gain=None, cap=1.0):
    """p (steps, N): the generator's probability of a spike of each unit in each 1 ms step of
    [start, end) (with another stimulus gain, `base_rate`'s; `cap` < 1 keeps a model's p off 1)."""
    p = np.minimum(base_rate(data, truth, start, end, stim_gain) * STEP, 0.9) * np.exp(np.minimum(coupling_input(data, truth, start, end), 2.0))
    return np.minimum(p, cap)


def ceiling(data_path, split="test", stim_gain=None):
    """bits/spike of the generator's probabilities (with `stim_gain`: that stimulus gain, p at
    most 0.999) on `split`'s trials, per row of trials (stimulus groups, and all)."""
    data = open_recording(data_path)
    truth = dict(np.load(Path(data_path).with_suffix(".truth.npz")))
    trials = select_trials(data, data_path, split)
    null_rate = training_rates(data, STEP)
    per_trial = []
    for start, end in zip(trials["start"], trials["end"]):
        start, end = round(float(start) / STEP) * STEP, round(float(end) / STEP) * STEP
        counts = spike_counts(data, start, end, STEP)
        p = step_probabilities(data, truth, start, end, stim_gain, 1.0 if stim_gain is None else 0.999)[:len(counts)]
        with np.errstate(divide="ignore"):
            truth_ll = np.where(counts > 0, np.log(p), np.log1p(-p)).sum(0)
        per_trial.append((counts.sum(0), poisson_log_likelihood(counts, null_rate), truth_ll))
    groups = stimulus_groups(data, trials)
    rows = {}
    for name, positions in ({**groups, "all": list(range(len(per_trial)))} if len(groups) > 1 else groups).items():
        n, null, ll = (sum(per_trial[i][k] for i in positions) for k in range(3))
        rows[name] = {"trials": len(positions), "n_spikes": int(n.sum()),
                      "bits_per_spike": bits_per_spike(float(ll.sum()), float(null.sum()), int(n.sum()))}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a recording made by `neuroformer prepare` with its .truth.npz")
    ap.add_argument("--split", default="test")
    ap.add_argument("--normalisations", action="store_true",
                    help="synthetic recording: also the true fields with the drive standardised by pooled or running statistics")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    rows = ceiling(a.data, a.split)
    for name, r in rows.items():
        print(f"{name:18s} {r['n_spikes']:7d} spikes  generator {r['bits_per_spike']:.3f} bits/spike")
    result = {"recording": a.data, "split": a.split, "rows": rows}
    if a.normalisations:
        data, truth = open_recording(a.data), dict(np.load(Path(a.data).with_suffix(".truth.npz")))
        result["normalisations"] = {name: ceiling(a.data, a.split, gain) for name, gain in stimulus_gains(data, truth).items()}
        for name, by_row in result["normalisations"].items():
            print(f"{name:10s} " + "  ".join(f"{row} {r['bits_per_spike']:.3f}" for row, r in by_row.items()))
    write_result(a.out, result, config=vars(a))


if __name__ == "__main__":
    main()
