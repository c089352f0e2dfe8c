"""Connectivity extraction time for a 1,000-neuron recording.

Makes a 1,000-neuron hub circuit (`neuroformer prepare --circuit hub`, 300 s), builds the
spikes-only model of configs/circuit.yaml (untrained: the cost of extraction does not depend on
the weights) and times each measure on the test split: attention (mean over heads and layers,
and gradient-weighted) over 256 windows, the perturbation measure per window (1,000 sources),
Pearson and lagged correlation. Peak memory is reported.

    python bench/bench_connectivity.py            # ~12 min (1 thread), peak memory 11.5 GB
    python bench/bench_connectivity.py --quick    # what the test runs
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from _common import peak_rss_mb

from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]


def main():
    from neuroformer.assembly import build
    from neuroformer.config import load_config
    from neuroformer.connectivity import (
        attention_connectivity,
        lagged_correlation,
        pearson_connectivity,
        perturbation_connectivity,
    )
    from neuroformer.data.circuits import HubCircuitConfig, hub_circuit
    from neuroformer.data.recording import open_recording
    from neuroformer.data.synthetic import write_with_truth
    from neuroformer.training import tiling_batches

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neuroformer-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "connectivity.json")
    args = parser.parse_args()
    n, duration, windows, pert_windows = (50, 30.0, 32, 2) if args.quick else (1000, 300.0, 256, 4)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rec = args.workdir / f"hub{n}.h5"
    clock = time.perf_counter()
    if not rec.exists():
        write_with_truth(rec, *hub_circuit(HubCircuitConfig(n_neurons=n, duration=duration)))
    made = time.perf_counter() - clock

    torch.manual_seed(0)
    recordings, dataset, model = build(load_config(ROOT / "configs" / "circuit.yaml"), [rec])
    model.eval()
    rid = recordings.recording_ids[0]
    batches = tiling_batches(recordings, dataset.spec, 32, windows // 32, split="test")
    data = open_recording(rec)
    spikes = len(data.spikes.timestamps)
    rows = {}

    def timed(name, fn, count):
        clock = time.perf_counter()
        fn()
        seconds = time.perf_counter() - clock
        rows[name] = {"seconds": seconds, "windows": count, "ms_per_window": 1000 * seconds / count if count else None}
        print(name, json.dumps(rows[name]))

    n_windows = sum(map(len, batches))
    timed("attention (mean)", lambda: attention_connectivity(model, dataset, rid, batches), n_windows)
    timed("attention (grad)", lambda: attention_connectivity(model, dataset, rid, batches, combine="grad"), n_windows)
    timed("perturbation", lambda: perturbation_connectivity(model, dataset, rid, [batches[0][:pert_windows]]),
          pert_windows)
    timed("pearson (10 ms)", lambda: pearson_connectivity(data, data.test_domain), 0)
    timed("lagged correlation (1 ms, 1-5 ms)", lambda: lagged_correlation(data, data.test_domain), 0)
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "neurons": n, "recording_s": duration, "spikes": spikes,
        "test_split_s": float(sum(data.test_domain.end - data.test_domain.start)),
        "making_the_recording_s": made, "rows": rows, "peak_rss_mb": peak_rss_mb(),
    }
    write_result(args.out, report, vars(args), 0)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
