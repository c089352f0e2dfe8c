"""Generation speed: KV-cached closed-loop rollouts against the naive full recompute per spike.

On the synthetic recording (100 neurons, ~5 Hz, 32 s trials of a 20 Hz 64x112 movie), at the demo's
size (configs/small.yaml: the demo's config until 2026-12-05, the transformer alone with softmax
heads), at the original's published size (width 256, 8 heads, 6 layers per stack, resnet18
features) and with the demo's own model (configs/demo.yaml: the point process), batch 1 and batch
16, cached and naive in the same run. Models are untrained but set to the recording's rates
(softmax heads: the Δ/END and unit heads' biases are the log frequencies of the training windows;
the point process: the GLM inside starts at each unit's rate and the transformer's corrections
are zeroed), so they generate about as many spikes per window as the recording has and the cost
per spike is the one of a trained model. The Poisson GLM baseline (`glm`), fitted on the
recording, rolls out the same trials. Reported: ms per generated spike, simulated seconds per
wall second, generated and recorded firing rates; the headline is 16 repeats of one 32 s trial
at the published size as one batch.

    python bench/bench_generate.py           # small.yaml, published.yaml and the GLM, ~12 min on 2 cores
    python bench/bench_generate.py --configs demo.yaml   # the point process
    python bench/bench_generate.py --quick   # what the test runs
    python bench/bench_generate.py --configs small.yaml   # the demo's size alone (~2 min)
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import peak_rss_mb

from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
GLM = "glm"             # the Poisson GLM baseline's rollout, in place of a config
GLM_PENALTY = 0.1       # the penalty PoissonGLM.fit chose on the benchmark's recording, stable over 32 s


def frequency_initialise(model, dataset, recordings):
    """Set the Δ/END and unit heads' biases to log frequencies of training windows (weights tiny);
    a point process's heads (corrections to its GLM, which starts at the units' rates) to zero."""
    from neuroformer.data.vocab import SPECIALS
    from neuroformer.data.windows import IGNORE, collate_windows
    from neuroformer.training import epoch_batches

    if model.point_process:
        with torch.no_grad():
            for head in (model.dt_head, model.unit_head, model.unit_drive_out):
                head.weight.zero_()
                head.bias.zero_()
        return
    dt = torch.ones(model.n_dt + 1)
    unit = torch.ones(len(dataset.vocab))
    for idx in epoch_batches(recordings, dataset.spec, "train", 32, 0, 0)[:20]:
        cur = collate_windows([dataset[i] for i in idx])["current"]
        dt += torch.bincount(cur["dt_target"][cur["dt_target"] != IGNORE], minlength=len(dt)).float()
        unit += torch.bincount(cur["unit_target"][cur["unit_target"] != IGNORE], minlength=len(unit)).float()
    unit[:len(SPECIALS)] = 1e-12
    with torch.no_grad():
        model.dt_head.bias.copy_((dt / dt.sum()).log())
        model.unit_head.bias.copy_((unit / unit.sum()).log())
        model.dt_head.weight.mul_(0.01)
        model.unit_head.weight.mul_(0.01)
        model.unit_drive_out.weight.zero_()


def prepared(config, recording):
    """(cfg, model, dataset, recording data, recording id) of `config` on `recording`, the model
    untrained but frequency-initialised, in eval mode."""
    from neuroformer.assembly import build
    from neuroformer.config import load_config

    torch.manual_seed(0)
    cfg = load_config(config)
    recordings, dataset, model = build(cfg, [recording])
    model.eval()
    frequency_initialise(model, dataset, recordings)
    rid = recordings.recording_ids[0]
    return cfg, model, dataset, recordings.get_recording(rid), rid


def first_trial(data, duration, n=1):
    """The first `duration` seconds of the recording's first trial (or first `n` trials), as a trial table."""
    if n > len(data.trials.start):
        raise SystemExit(f"bench_generate: the recording has {len(data.trials.start)} trials, {n} asked for")
    start = np.asarray(data.trials.start[:n], dtype=float)
    return {"index": np.arange(n), "start": start, "end": start + duration,
            "stimulus_id": np.asarray(data.trials.stimulus_id[:n])}


def warm_up(model, dataset, rid, trials, cache):
    """One 0.1 s rollout, so lazy initialisation is not timed."""
    from neuroformer.rollouts import SimulationOptions, rollout

    rollout(model, dataset, rid, {**trials, "end": trials["start"] + 0.1},
            SimulationOptions(repeats=1, batch=1, cache=cache, progress=False))


def measure(config, recording, duration, batch, cache, repeats, n_trials=1):
    """One timed rollout of the first `n_trials` trials' first `duration` s, `repeats` each, `batch`
    rows at a time: bench_generate's row. `config` is a config file, or `GLM` (batch: every
    (trial, repeat) at once)."""
    if config == GLM:
        return measure_glm(recording, duration, repeats, n_trials)
    from neuroformer.rollouts import SimulationOptions, rollout

    cfg, model, dataset, data, rid = prepared(config, recording)
    trials = first_trial(data, duration, n_trials)
    opts = SimulationOptions(repeats=repeats, batch=batch, cache=cache, progress=False)
    warm_up(model, dataset, rid, trials, cache)
    clock = time.perf_counter()
    sim = rollout(model, dataset, rid, trials, opts)
    wall = time.perf_counter() - clock
    return dict(config=Path(config).name, width=cfg.model.width, layers=cfg.model.decoder_layers, batch=batch,
                mode="cached" if cache else "naive", **_figures(sim, data, trials, repeats, duration, wall))


def measure_glm(recording, duration, repeats, n_trials=1):
    """The GLM's row: fitted on the recording's training split at one penalty (`GLM_PENALTY`, stable
    over `duration`; the fit's time reported apart), then one closed-loop rollout timed."""
    from neuroformer.data.recording import open_recording
    from neuroformer.glm import GLMConfig, PoissonGLM

    clock = time.perf_counter()
    glm = PoissonGLM.fit(recording, GLMConfig(penalties=(GLM_PENALTY,)), progress=False, stable_seconds=duration)
    fit = time.perf_counter() - clock
    with open_recording(recording) as data:
        trials = first_trial(data, duration, n_trials)
        clock = time.perf_counter()
        sim = glm.simulate(data, trials, repeats, seed=0, progress=False)
        wall = time.perf_counter() - clock
        return dict(config=GLM, width=None, layers=None, batch=repeats * n_trials, mode="closed loop", fit_s=fit,
                    **_figures(sim, data, trials, repeats, duration, wall))


def _figures(sim, data, trials, repeats, duration, wall):
    """Speed and rates of a timed rollout `sim` of `trials`."""
    n_trials, n_units = len(trials["start"]), len(sim.unit_ids)
    simulated = duration * repeats * n_trials
    recorded = sum(len(data.spikes.slice(a, a + duration, reset_origin=False).timestamps) for a in trials["start"])
    return dict(trials=n_trials, repeats=repeats, simulated_s=simulated, wall_s=wall, spikes=len(sim.timestamps),
                ms_per_spike=1000 * wall / max(1, len(sim.timestamps)), sim_s_per_wall_s=simulated / wall,
                generated_rate_hz=len(sim.timestamps) / (simulated * n_units),
                recorded_rate_hz=recorded / (duration * n_trials * n_units), peak_rss_mb=peak_rss_mb())


def synthetic_recording(workdir, quick=False):
    """The benchmark's recording in `workdir` (made unless there): 32 s trials of 100 neurons, or
    a tiny one with `quick`."""
    from neuroformer.data.synthetic import SyntheticConfig, write_synthetic

    if quick:
        path = workdir / "generate_quick.h5"
        syn = SyntheticConfig(n_neurons=20, trial_length=2, n_movies=1, n_trials=4, n_heldout_movies=1, heldout_trials=1)
    else:
        path = workdir / "generate_32s.h5"
        syn = SyntheticConfig(trial_length=32.0, n_movies=1, n_trials=6, n_heldout_movies=1, heldout_trials=2)
    if not path.exists():
        write_synthetic(path, syn)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neuroformer-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generate.json")
    parser.add_argument("--configs", default=f"small.yaml,published.yaml,{GLM}",
                        help=f"which of small.yaml, published.yaml, demo.yaml and {GLM} (the Poisson GLM) to run")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    recording = synthetic_recording(args.workdir, args.quick)
    if args.quick:
        configs = [ROOT / "configs" / "small.yaml", ROOT / "configs" / "demo.yaml", GLM]
        # (duration s, batch, cache, repeats)
        plan = {"small.yaml": [(0.2, 1, True, 1), (0.2, 1, False, 1), (0.2, 2, True, 2)],
                "demo.yaml": [(0.2, 2, True, 2)], GLM: [(0.2, 2, True, 2)]}
    else:
        names = args.configs.split(",")
        if not set(names) <= {"small.yaml", "published.yaml", "demo.yaml", GLM}:
            parser.error(f"--configs: small.yaml, published.yaml, demo.yaml and/or {GLM}, got {args.configs!r}")
        configs = [name if name == GLM else ROOT / "configs" / name for name in names]
        demo_size = [(8.0, 1, True, 1), (1.0, 1, False, 1), (32.0, 16, True, 16), (0.5, 16, False, 16)]
        plan = {"small.yaml": demo_size, "demo.yaml": demo_size,
                "published.yaml": [(4.0, 1, True, 1), (0.5, 1, False, 1), (32.0, 16, True, 16),
                                   (0.25, 16, False, 16)],
                GLM: [(4.0, 1, True, 1), (32.0, 16, True, 16)]}
    rows = []
    for config in configs:
        for duration, batch, cache, repeats in plan[Path(config).name]:
            row = measure(config, recording, duration, batch, cache, repeats)
            rows.append(row)
            print(json.dumps(row))
    for config in configs:
        mine = [r for r in rows if r["config"] == Path(config).name]
        for batch in sorted({r["batch"] for r in mine}):
            c = [r for r in mine if r["batch"] == batch and r["mode"] == "cached"]
            n = [r for r in mine if r["batch"] == batch and r["mode"] == "naive"]
            if c and n:
                print(f"{Path(config).name} batch {batch}: cached is {n[0]['ms_per_spike'] / c[0]['ms_per_spike']:.1f}x "
                      f"faster per spike than naive")
    write_result(args.out, {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "rows": rows},
                 vars(args), 0)


if __name__ == "__main__":
    main()
