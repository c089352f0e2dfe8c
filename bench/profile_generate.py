"""Where closed-loop generation spends its time, and how far a decoder step is from the machine's limit.

One rollout of the benchmark recording (bench_generate.py's: 100 neurons, 32 s trials) is timed,
then run again under torch.profiler (same seed, same spikes), whose labelled parts (window data,
context, decoder, heads, sampling; the rest is the rollout's bookkeeping) split the timed wall
clock. The limit: the decoder step's matrix products alone, run back to back on the model's own
weights at the same batch in the layout the step reads them (`nn.laid_out`; timed in turn with
the modules' own layout), what no per-operation overhead can go below on this machine, and the
rollout's floor: every step at those products plus its attention over the cached keys and values
(the single-query attention alone, at the rollout's memory and token counts), every window's
context encoded for all rows at once (the least overhead per row) and every trial window's frames
and behaviour encoded once (with the windows after it, `generation.AHEAD`, as the rollout does),
times the counts of steps and windows of the timed rollout.

    python bench/profile_generate.py --config configs/published.yaml --batch 1 -o W/profile_b1.json
    python bench/profile_generate.py --config configs/published.yaml --batch 16 -o W/profile_b16.json
    python bench/profile_generate.py --quick -o /tmp/profile.json     # what the test runs
"""
import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from bench_generate import first_trial, prepared, synthetic_recording, warm_up

from neuroformer.cli import positive_int
from neuroformer.nn import laid_out, product
from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("window data", "context", "decoder", "heads", "sampling")


def step_linears(model):
    """The linear layers a cached decoder step runs (cross-attention keys and values are cached)."""
    layers = [m for name, m in model.decoder.named_modules() if isinstance(m, nn.Linear) and not name.endswith("cross.kv")]
    return layers + [model.dt_head, model.unit_head]


def timed_ms(f, repeats, warm_up=1):
    """ms per call of f() after `warm_up` calls."""
    for _ in range(warm_up):
        f()
    clock = time.perf_counter()
    for _ in range(repeats):
        f()
    return 1000 * (time.perf_counter() - clock) / repeats


@torch.inference_mode()
def matmul_floor(model, batch, repeats=200):
    """ms of one step's matrix products at `batch` rows with each weight in the layout the step
    reads (`nn.laid_out`), their GFLOP/s, and ms with each weight in its module's own (out, in)
    layout: the two timed in turn, three times each, the best of each kept."""
    layers = step_linears(model)
    inputs = [torch.randn(batch, m.in_features) for m in layers]
    layouts = {"laid_out": [laid_out(m, rows=batch) for m in layers], "own": [(m.weight.t(), m.bias, None) for m in layers]}

    def products(weights):
        for laid, x in zip(weights, inputs):
            product(x, laid)
    best = {}
    for _ in range(3):
        for name, weights in layouts.items():
            best[name] = min(best.get(name, float("inf")), timed_ms(lambda: products(weights), repeats, warm_up=10))
    flops = 2 * batch * sum(m.in_features * m.out_features for m in layers)
    return best["laid_out"], flops / best["laid_out"] / 1e6, best["own"]


@torch.no_grad()
def context_floor(model, dataset, batch, repeats=5):
    """Per window and row: ms and GFLOP of encoding the context of `batch` training windows at once
    (history, memory, unit drives, the decoder's memory keys and values), the frames and behaviour
    and their keys given; per trial window: ms of its frames and behaviour and their keys
    (`stimulus_parts`, `stimulus_keys`: once for all repeats, with those of the `AHEAD` windows
    after it, as a rollout encodes them); and the memory's padded token count."""
    from neuroformer.data.windows import collate_windows
    from neuroformer.generation import AHEAD
    from neuroformer.nn import new_caches
    from neuroformer.training import epoch_batches

    idx = epoch_batches(dataset.recordings, dataset.spec, "train", batch, 0, 0)[0]
    windows = collate_windows([dataset[i] for i in idx])
    stimulus = model.stimulus_parts(windows)
    keys = model.stimulus_keys(stimulus)
    caches, rows = new_caches(model.decoder, batch), torch.arange(batch)

    def context():
        memory, _ = model.encode_context(windows, model.context_parts(windows, stimulus))
        model.unit_drive(memory)
        model.start_caches(caches, rows, memory, keys)
        return memory
    with torch.enable_grad(), FlopCounterMode(display=False) as flops:
        memory = context()                                # (the counter's module hooks need autograd)
    group = collate_windows([dataset[i] for i in epoch_batches(dataset.recordings, dataset.spec, "train", AHEAD + 1, 0, 0)[0]])
    return {"context_ms": timed_ms(context, repeats) / batch, "context_gflop": flops.get_total_flops() / 1e9 / batch,
            "stimulus_ms": timed_ms(lambda: model.stimulus_keys(model.stimulus_parts(group)), repeats) / (AHEAD + 1),
            "memory_tokens": memory[0].shape[1]}


@torch.inference_mode()
def attention_floor(model, batch, memory_tokens, own_tokens, repeats=200):
    """ms of one step's single-query attention in every decoder layer: to `memory_tokens` cached
    memory keys and values and to `own_tokens` of the row's own, at `batch` rows."""
    heads, width = model.decoder[0].attn.heads, model.unit_emb.weight.shape[1]
    q = torch.randn(batch, heads, 1, width // heads)
    kv = [torch.randn(2, batch, heads, n, width // heads)                # each layer its own (no cache reuse)
          for _ in model.decoder for n in (memory_tokens, own_tokens)]

    def attend():
        for k, v in kv:
            F.scaled_dot_product_attention(q, k, v)
    return timed_ms(attend, repeats)


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
    floor_ms, gflops, own_layout_ms = matmul_floor(model, args.batch)
    context = context_floor(model, dataset, args.batch)
    windows = round(args.seconds / cfg.window.current)                  # of the trial, each for every row
    held = max(1, round(spikes / (args.batch * windows) / 2))           # a row's own tokens, on average
    attention_ms = attention_floor(model, args.batch, context["memory_tokens"], held)
    rollout_floor = (steps * (floor_ms + attention_ms) + args.batch * windows * context["context_ms"]
                     + windows * context["stimulus_ms"]) / 1000
    result = {"config": args.config.name, "batch": args.batch, "simulated_s": args.seconds * args.batch, "wall_s": wall,
              "spikes": spikes, "decoder_steps": steps, "ms_per_spike": 1000 * wall / spikes,
              "threads": torch.get_num_threads(),
              "parts": {p: {"share": f, "ms_per_spike": 1000 * wall * f / spikes, "ms_per_step": 1000 * wall * f / steps}
                        for p, f in share.items()},
              "decoder_matmul_floor_ms_per_step": floor_ms, "decoder_matmul_gflops": gflops,
              "decoder_matmul_own_layout_ms_per_step": own_layout_ms,
              "attention_floor_ms_per_step": attention_ms, "own_tokens": held, **context,
              "context_gflops": context["context_gflop"] / context["context_ms"] * 1000,
              "rollout_floor_s": rollout_floor}
    print(f"{args.config.name} batch {args.batch}: {spikes} spikes, {steps} decoder steps, {wall:.2f} s, "
          f"{result['ms_per_spike']:.2f} ms/spike")
    for p, row in result["parts"].items():
        print(f"  {p:<12} {100 * row['share']:5.1f}%  {row['ms_per_spike']:.3f} ms/spike  {row['ms_per_step']:.3f} ms/step")
    print(f"  decoder step's matmuls alone: {floor_ms:.3f} ms/step ({gflops:.1f} GFLOP/s; {own_layout_ms:.3f} ms with "
          f"the modules' own weight layout); its attention alone "
          f"{attention_ms:.3f} ms/step ({context['memory_tokens']} memory, {held} own tokens)")
    print(f"  context of {args.batch} rows at once: {context['context_ms']:.2f} ms per window and row "
          f"({result['context_gflops']:.1f} GFLOP/s); frames and behaviour {context['stimulus_ms']:.2f} ms per window")
    print(f"  the rollout's floor: {rollout_floor:.2f} s of {wall:.2f} s")
    write_result(args.out, result, vars(args), 0)


if __name__ == "__main__":
    main()
