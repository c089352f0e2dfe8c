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
"""
import argparse
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from neuroformer.data.recording import behavior_values, open_recording, spike_counts
from neuroformer.data.synthetic import KERNEL_TAU, STEP
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


def base_rate(data, truth, start, end):
    """base (steps, N) in Hz on the steps of [start, end): the baseline rate of a circuit, or the
    synthetic recording's stimulus x running gain (its stimulus gain recovered from `true_rate`)."""
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
    stim_gain = truth["true_rate"] / (truth["target_rate"] * speed_gain(grid_t))
    t = (int(round(start / STEP)) + np.arange(n_steps)) * STEP
    frame = np.clip(((t[:, None] - truth["latency"][None, :]) * frame_rate).astype(int), 0, len(grid_t) - 1)
    return truth["target_rate"] * np.take_along_axis(stim_gain, frame, 0) * speed_gain(t)


def step_probabilities(data, truth, start, end):
    """p (steps, N): the generator's probability of a spike of each unit in each 1 ms step of [start, end)."""
    p = np.minimum(base_rate(data, truth, start, end) * STEP, 0.9) * np.exp(np.minimum(coupling_input(data, truth, start, end), 2.0))
    return np.minimum(p, 1.0)


def ceiling(data_path, split="test"):
    data = open_recording(data_path)
    truth = dict(np.load(Path(data_path).with_suffix(".truth.npz")))
    trials = select_trials(data, data_path, split)
    null_rate = training_rates(data, STEP)
    per_trial = []
    for start, end in zip(trials["start"], trials["end"]):
        start, end = round(float(start) / STEP) * STEP, round(float(end) / STEP) * STEP
        counts = spike_counts(data, start, end, STEP)
        p = step_probabilities(data, truth, start, end)[:len(counts)]
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
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    rows = ceiling(a.data, a.split)
    for name, r in rows.items():
        print(f"{name:18s} {r['n_spikes']:7d} spikes  generator {r['bits_per_spike']:.3f} bits/spike")
    write_result(a.out, {"recording": a.data, "split": a.split, "rows": rows}, config=vars(a))


if __name__ == "__main__":
    main()
