"""Periodic inputs: does cross-attention recover which of N inputs drives each of N neurons?

Simulates N neurons, each driven by one of N periodic inputs (a random one-to-one mapping,
`neuroformer.data.circuits.periodic_inputs`), stores the inputs as one multichannel signal
(a token per channel and sample, with a channel embedding), trains configs/periodic.yaml, and
reads each unit's attention to the input channels on the test split (mean over heads, and
gradient-weighted). Accuracy = fraction of neurons whose most-attended channel is their true
input. The baseline is the same question answered by correlation: for each neuron, the input
channel whose value correlates most with its 50 ms-binned counts (training split).

    python analysis/periodic_inputs.py -o runs/periodic                  # 100 neurons, ~25 min on 2 CPU cores
    python analysis/periodic_inputs.py -o runs/periodic1k --neurons 1000 --duration 120 --steps 2000 --batch 8
    python analysis/periodic_inputs.py --quick -o /tmp/periodic          # seconds; what the test runs

Writes OUT/result.json, OUT/input_attention.png and OUT/connectivity.npz, and prints the accuracies.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from neuroformer.checkpoints import load_model
from neuroformer.config import load_config
from neuroformer.connectivity import model_connectivity
from neuroformer.data.circuits import PeriodicInputsConfig, periodic_inputs
from neuroformer.data.recording import open_recording, spike_counts
from neuroformer.data.synthetic import write_with_truth
from neuroformer.plots import subplots
from neuroformer.provenance import write_result
from neuroformer.training import RunOptions, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "periodic.yaml"


def correlation_mapping(data, bin_size=0.05):
    """Each neuron's best-correlated input channel on the training split (the baseline)."""
    counts, values = [], []
    inputs = data.behavior.inputs
    for a, b in zip(np.asarray(data.train_domain.start), np.asarray(data.train_domain.end)):
        c = spike_counts(data, a, b, bin_size).astype(float)
        t = a + (np.arange(len(c)) + 0.5) * bin_size
        k = np.clip(np.searchsorted(np.asarray(inputs.timestamps), t) - 1, 0, None)
        counts.append(c)
        values.append(np.asarray(inputs.values)[k])
    c, v = np.concatenate(counts), np.concatenate(values)
    c, v = (c - c.mean(0)) / (c.std(0) + 1e-9), (v - v.mean(0)) / (v.std(0) + 1e-9)
    return np.abs(c.T @ v / len(c))


def accuracy(matrix, input_of):
    return float(np.mean(np.argmax(matrix, 1) == input_of))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny circuit and model (for tests)")
    parser.add_argument("--neurons", type=int, help="neurons = inputs (default 100; quick 8)")
    parser.add_argument("--duration", type=float, help="recording length in s (default 300; quick 30)")
    parser.add_argument("--steps", type=int, help="training steps (default the config's 6000; quick 20)")
    parser.add_argument("--batch", type=int, help="training batch size (default the config's 32)")
    parser.add_argument("--lr", type=float, help="learning rate (default the config's)")
    parser.add_argument("--gain", type=float, default=2.0, help="log-rate modulation depth (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.neurons or (8 if args.quick else 100)
    duration = args.duration or (30.0 if args.quick else 300.0)
    cfg = load_config(CONFIG)
    steps = args.steps or (20 if args.quick else cfg.train.max_steps)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    times, clock = {}, time.perf_counter()
    rec = out / "periodic.h5"
    if not rec.exists():
        write_with_truth(rec, *periodic_inputs(PeriodicInputsConfig(n_neurons=n, duration=duration, seed=args.seed,
                                                                    gain=args.gain)))
    input_of = np.load(rec.with_suffix(".truth.npz"))["input_of"]
    times["circuit_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cfg.modalities["inputs"].variables["inputs.values"].channels = n
    cfg.train.batch_size = args.batch or cfg.train.batch_size
    cfg.train.lr = args.lr or cfg.train.lr
    cfg.train.eval_every = cfg.train.checkpoint_every = min(cfg.train.eval_every, steps)
    run = out / "run"
    train(cfg, [rec], RunOptions(run, max_steps=steps, seed=args.seed, resume=(run / "last.pt").exists()))
    times["train_s"] = time.perf_counter() - clock

    result = {"neurons": n, "duration_s": duration, "gain": args.gain, "steps": steps, "batch": cfg.train.batch_size,
              "lr": cfg.train.lr}
    cfg, model, dataset, recordings = load_model(run / "best.pt", [rec])
    rid = recordings.recording_ids[0]
    maps = {}
    for combine in ("mean", "grad"):
        clock = time.perf_counter()
        maps[combine] = model_connectivity(model, dataset, rid, "test", windows=256, perturbation_windows=0,
                                           batch_size=8, combine=combine, progress=False)["input_attention"]
        times[f"extract_{combine}_s"] = time.perf_counter() - clock
        result[f"accuracy_attention_{combine}"] = accuracy(maps[combine], input_of)
    clock = time.perf_counter()
    corr = correlation_mapping(open_recording(rec))
    times["correlation_s"] = time.perf_counter() - clock
    result["accuracy_correlation"] = accuracy(corr, input_of)
    result["chance"] = 1.0 / n
    result["times_s"] = times
    np.savez_compressed(out / "connectivity.npz", input_of=input_of, correlation=corr,
                        **{f"input_attention_{k}": v for k, v in maps.items()})
    write_result(out / "result.json", result, vars(args), args.seed)
    figure({"attention (mean)": maps["mean"], "attention (grad)": maps["grad"], "correlation": corr}, input_of,
           out / "input_attention.png")
    print(json.dumps(result, indent=2))


def figure(matrices, input_of, path):
    """Neuron x input matrices with columns reordered so the true mapping is the diagonal."""
    fig, axes = subplots(1, len(matrices), figsize=(3.6 * len(matrices), 3.6), squeeze=False)
    for ax, (name, m) in zip(axes[0], matrices.items()):
        ax.imshow(m[:, input_of], cmap="magma", interpolation="nearest")     # column i: neuron i's input
        ax.set_title(f"{name}: {accuracy(m, input_of):.0%} correct", fontsize=8)
        ax.set_xlabel("input (reordered: true input on the diagonal)", fontsize=7)
        ax.set_ylabel("neuron", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
