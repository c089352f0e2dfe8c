"""Where closed-loop generation spends its time, and how far a decoder step is from the machine's limit.

One rollout of the benchmark recording (bench_generate.py's: 100 neurons, 32 s trials) is timed,
then run again under torch.profiler (same seed, same spikes), whose labelled parts (window data,
context, decoder, heads, sampling; the rest is the rollout's bookkeeping) split the timed wall
clock. The limit: the decoder step's matrix products alone, run back to back on the model's own
weights at the same batch (what no per-operation overhead can go below on this machine).

    python bench/profile_generate.py --config configs/published.yaml --batch 1 -o W/profile_b1.json
    python bench/profile_generate.py --config configs/published.yaml --batch 16 -o W/profile_b16.json
    python bench/profile_generate.py --quick -o /tmp/profile.json     # what the test runs
"""
import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench_generate import first_trial, prepared, synthetic_recording, warm_up

from neuroformer.cli import positive_int
from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("window data", "context", "decoder", "heads", "sampling")


def step_linears(model):
    """The linear layers a cached decoder step runs (cross-attention keys and values are cached)."""
    layers = [m for name, m in model.decoder.named_modules() if isinstance(m, nn.Linear) and not name.endswith("cross.kv")]
    return layers + [model.dt_head, model.unit_head]


@torch.inference_mode()
def matmul_floor(model, batch, repeats=200):
    """ms of one step's matrix products at `batch` rows, and their GFLOP/s."""
    layers = step_linears(model)
    inputs = [torch.randn(batch, m.in_features) for m in layers]
    for _ in range(10):
        for m, x in zip(layers, inputs):
            torch.nn.functional.linear(x, m.weight, m.bias)
    clock = time.perf_counter()
    for _ in range(repeats):
        for m, x in zip(layers, inputs):
            torch.nn.functional.linear(x, m.weight, m.bias)
    ms = 1000 * (time.perf_counter() - clock) / repeats
    flops = 2 * batch * sum(m.in_features * m.out_features for m in layers)
    return ms, flops / ms / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "published.yaml")
    parser.add_argument("--batch", type=positive_int, default=1, help="repeats of one trial, generated as one batch")
    parser.add_argument("--seconds", type=float, default=2.0, help="simulated seconds of the trial")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neuroformer-bench"))
    parser.add_argument("--quick", action="store_true", help="the tiny recording, small.yaml, 0.2 s")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    from neuroformer.rollouts import SimulationOptions, rollout

    if args.quick:
        args.config, args.seconds = ROOT / "configs" / "small.yaml", 0.2
    args.workdir.mkdir(parents=True, exist_ok=True)
    cfg, model, dataset, data, rid = prepared(args.config, synthetic_recording(args.workdir, args.quick))
    trials = first_trial(data, args.seconds)
    warm_up(model, dataset, rid, trials, cache=True)
    opts = SimulationOptions(repeats=args.batch, batch=args.batch, progress=False)
    clock = time.perf_counter()
    sim = rollout(model, dataset, rid, trials, opts)
    wall = time.perf_counter() - clock
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        clock = time.perf_counter()
        again = rollout(model, dataset, rid, trials, opts)
        profiled = time.perf_counter() - clock                  # (not the profiler's own processing)
    assert (again.timestamps == sim.timestamps).all()          # the profiled run is the timed one
    events = {e.key: e for e in prof.key_averages() if e.key in PARTS}
    steps = events["decoder"].count
    share = {p: events[p].cpu_time_total / 1e6 / profiled if p in events else 0.0 for p in PARTS}
    share["bookkeeping"] = max(0.0, 1 - sum(share.values()))
    spikes = len(sim.timestamps)
    floor_ms, gflops = matmul_floor(model, args.batch)
    result = {"config": args.config.name, "batch": args.batch, "simulated_s": args.seconds * args.batch, "wall_s": wall,
              "spikes": spikes, "decoder_steps": steps, "ms_per_spike": 1000 * wall / spikes,
              "threads": torch.get_num_threads(),
              "parts": {p: {"share": f, "ms_per_spike": 1000 * wall * f / spikes, "ms_per_step": 1000 * wall * f / steps}
                        for p, f in share.items()},
              "decoder_matmul_floor_ms_per_step": floor_ms, "decoder_matmul_gflops": gflops}
    print(f"{args.config.name} batch {args.batch}: {spikes} spikes, {steps} decoder steps, {wall:.2f} s, "
          f"{result['ms_per_spike']:.2f} ms/spike")
    for p, row in result["parts"].items():
        print(f"  {p:<12} {100 * row['share']:5.1f}%  {row['ms_per_spike']:.3f} ms/spike  {row['ms_per_step']:.3f} ms/step")
    print(f"  decoder step's matmuls alone: {floor_ms:.3f} ms/step ({gflops:.1f} GFLOP/s)")
    write_result(args.out, result, vars(args), 0)


if __name__ == "__main__":
    main()
