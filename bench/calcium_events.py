"""Event recovery from synthetic calcium: how close `prepare --events` gets to the true spikes.

For each seed, the synthetic recording's spikes (100 neurons, 3 movies x 10 trials + held-out
trials, ~420 s, seed = the recording's) go through the indicator model of data/calcium.py at
each photon count (shot noise s.d. 1/sqrt(photons) ΔF/F; the default is 500), the traces are
deconvolved as `prepare --events` does, and events and true spikes are counted in 100 ms bins:
- r: each unit's Pearson correlation of event counts with spike counts, averaged over units
  (and the same for the deconvolved activity before it becomes whole events);
- precision / recall: Σ min(events, spikes) over bins and units, divided by the events / by the
  spikes (count matching at 100 ms);
- events per spike, and OASIS's fitted decay per frame against the true one.
Writes one JSON (per photon count: mean and s.d. over seeds) and a figure of one unit's trace,
its events and its spikes.

    python bench/calcium_events.py -o bench/results/calcium_events.json     # ~2 min on 2 cores
"""
import argparse
from pathlib import Path

import numpy as np

from _common import over_seeds, seed_list
from neuroformer.data.calcium import SPIKE_AMPLITUDE, CalciumModel, deconvolve, traces_from_spikes
from neuroformer.data.synthetic import SyntheticConfig, generate
from neuroformer.plots import subplots
from neuroformer.provenance import write_result

BIN = 0.1


def binned(times, units, n_units, edges):
    """Counts (n_units, bins) of events at `times` of `units` in the bins of `edges`."""
    return np.stack([np.histogram(times[units == u], edges)[0] for u in range(n_units)])


def per_frame(values, rate, edges):
    """(frames, units) values summed into the bins of `edges` (frame centres)."""
    centres = (np.arange(len(values)) + 0.5) / rate
    return np.stack([np.histogram(centres, edges, weights=values[:, u])[0] for u in range(values.shape[1])])


def mean_r(a, b):
    rs = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b) if x.std() > 0 and y.std() > 0]
    return float(np.mean(rs))


def recovery(times, units, n_units, duration, model, seed):
    """The scores of one recording's spikes through `model` and back."""
    n_frames = int(duration * model.rate)
    traces = traces_from_spikes(times, units, n_units, n_frames, model, np.random.default_rng(seed))
    activity, events, fits = deconvolve(traces)
    edges = np.arange(0.0, n_frames / model.rate + 1e-9, BIN)
    spikes = binned(times, units, n_units, edges)
    found = per_frame(events.astype(float), model.rate, edges)
    matched = np.minimum(found, spikes).sum()
    scores = {"r_events": mean_r(found, spikes), "r_activity": mean_r(per_frame(activity, model.rate, edges), spikes),
              "precision": float(matched / max(found.sum(), 1)), "recall": float(matched / max(spikes.sum(), 1)),
              "events_per_spike": float(found.sum() / max(spikes.sum(), 1)),
              "decay_fitted": float(np.median(fits["decay"])),
              "decay_true": float(np.exp(-1.0 / (model.rate * model.tau)))}
    return scores, (traces, events)


def figure(times, units, traces, events, model, out):
    unit, span = int(np.bincount(units).argmax()), (20.0, 40.0)
    frames = slice(int(span[0] * model.rate), int(span[1] * model.rate))
    t = np.arange(frames.start, frames.stop) / model.rate
    fig, ax = subplots(1, 1, figsize=(9, 3))
    ax.plot(t, traces[frames, unit], lw=0.8, color="0.3", label="ΔF/F")
    spikes = times[(units == unit) & (times >= span[0]) & (times < span[1])]
    ax.vlines(spikes, -0.45, -0.3, color="k", lw=0.8, label="true spikes")
    ev = np.repeat(t, events[frames, unit])
    ax.vlines(ev, -0.65, -0.5, color="tab:red", lw=0.8, label="events")
    ax.set_xlabel("time (s)")
    ax.set_title(f"unit {unit}: trace, true spikes, deconvolved events ({model.photons:g} photons a frame)")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(out, dpi=120, bbox_inches="tight")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="result JSON (figure beside it)")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    parser.add_argument("--photons", default="200,500,1000", help="comma-separated photon counts a frame")
    args = parser.parse_args()
    photons = [float(p) for p in args.photons.split(",")]
    rows = {p: [] for p in photons}
    for seed in args.seeds:
        data, _ = next(iter(generate(SyntheticConfig(seed=seed))))
        times, units = np.asarray(data.spikes.timestamps), np.asarray(data.spikes.unit_index)
        duration = float(data.domain.end[-1])
        for p in photons:
            model = CalciumModel(photons=p)
            scores, (traces, events) = recovery(times, units, len(data.units.id), duration, model, seed)
            rows[p].append(scores)
            print(f"seed {seed}, {p:g} photons: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
            if seed == args.seeds[0] and p == CalciumModel.photons:
                figure(times, units, traces, events, model, args.output.with_suffix(".png"))
    table = {f"{p:g} photons": {k: over_seeds([r[k] for r in rows[p]]) for k in rows[p][0]} for p in photons}
    write_result(args.output, {"spike_amplitude": SPIKE_AMPLITUDE, "bin_s": BIN, "seeds": args.seeds,
                               "results": table, "figure": str(args.output.with_suffix(".png"))}, vars(args))
    for name, row in table.items():
        print(f"{name}: r {row['r_events']['mean']:.3f} ± {row['r_events']['sd']:.3f}, precision "
              f"{row['precision']['mean']:.3f}, recall {row['recall']['mean']:.3f}, events/spike "
              f"{row['events_per_spike']['mean']:.2f}")


if __name__ == "__main__":
    main()
