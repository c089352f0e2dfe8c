"""Long closed-loop trials: train on a synthetic recording with 32 s trials (10 of the training
movie, 3 of a held-out movie), roll out its test trials closed-loop (8 repeats each), and compare
them with the held-out recorded repeats and with the Poisson GLM, on held-out trials of the
training movie and on the held-out movie.

    python simulate/long_trials.py -o runs/long_trials      # full run: ~20 min on 2 CPU cores
    python simulate/long_trials.py --quick -o /tmp/lt       # a few seconds' worth; what the test runs

Writes OUT/recording.h5 (+ .truth.npz), OUT/run/ (checkpoints), OUT/simulated.h5 and .nwb,
OUT/report.json with its figures (rasters, PSTHs, per-neuron correlation), and prints the table.
"""
import argparse
import json
import time
from pathlib import Path

from neuroformer.config import load_config
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.evaluate import evaluate_simulation, format_comparison
from neuroformer.provenance import write_result
from neuroformer.rollouts import SimulationOptions, simulate
from neuroformer.simulations import save_nwb, save_simulation
from neuroformer.training import RunOptions, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "small.yaml"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny recording and model (for tests)")
    parser.add_argument("--steps", type=int, help="training steps (default 1500; quick 20)")
    parser.add_argument("--repeats", type=int, help="rollouts per held-out trial (default 8; quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        syn = SyntheticConfig(n_neurons=20, trial_length=3.0, n_movies=1, n_trials=6, n_heldout_movies=1, heldout_trials=2,
                              seed=args.seed)
        steps, repeats = args.steps or 20, args.repeats or 2
    else:
        syn = SyntheticConfig(trial_length=32.0, n_movies=1, n_trials=10, n_heldout_movies=1, heldout_trials=3, seed=args.seed)
        steps, repeats = args.steps or 1500, args.repeats or 8
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    stages, clock = {}, time.perf_counter()
    recording = out / "recording.h5"
    if not recording.exists():
        write_synthetic(recording, syn)
    stages["prepare_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    run = out / "run"
    cfg = load_config(CONFIG)
    cfg.train.eval_every = cfg.train.checkpoint_every = min(cfg.train.eval_every, steps)
    train(cfg, [recording], RunOptions(run, max_steps=steps, seed=args.seed, resume=(run / "last.pt").exists()))
    stages["train_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    sim = simulate(run, recording, SimulationOptions(repeats=repeats, seed=args.seed, batch=16))
    save_simulation(sim, out / "simulated.h5")
    save_nwb(sim, out / "simulated.nwb")
    stages["simulate_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    report = evaluate_simulation(recording, out / "simulated.h5", out / "report.json", run=run, baseline="glm",
                                 seed=args.seed)
    stages["evaluate_s"] = time.perf_counter() - clock
    report["stages"] = stages
    write_result(out / "report.json", report, vars(args), args.seed)
    print(format_comparison(report["summary"]))
    print(json.dumps(stages))


if __name__ == "__main__":
    main()
