"""Closed-loop simulation of the synthetic recording's test trials against the recorded ones and
the Poisson GLM, 3 seeds.

For each seed: train the config (`neuroformer train`, resumed when interrupted), roll out every
test trial closed loop (`neuroformer simulate`, 4 repeats), and compare with the recorded trials
(`neuroformer evaluate --baseline glm`: PSTH r, rates, ISI, pairwise correlations, teacher-forced
bits/spike; the GLM fitted, simulated and scored with the same seed). Every finished step is
reused, so an interrupted study resumes. Writes one JSON with the mean and s.d. over seeds of
each row (trials of training movies, of held-out movies) and prints the table.

    python bench/closed_loop.py -o runs/closed_loop             # ~75 min on 2 cores (3 seeds)
    python bench/closed_loop.py --quick -o /tmp/closed_loop     # what the test runs
"""
import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from _common import seed_list, config_file, neuroformer, over_seeds, synthetic_recording, train
from neuroformer.cli import positive_int
from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("psth_r_median", "rate_ratio", "isi_ks_median", "pairwise_similarity", "bits_per_spike")


def run_seed(data, config, seed, workdir, repeats=4):
    """One seed's evaluate report: train, simulate and evaluate, each skipped when already done."""
    run, simulated, out = workdir / f"run_s{seed}", workdir / f"sim_s{seed}.h5", workdir / f"eval_s{seed}" / "report.json"
    if not out.exists():
        train(config, data, run, seed, yaml.safe_load(config.read_text())["train"]["max_steps"])
        if not simulated.exists():
            neuroformer("simulate", "--run", run, "--data", data, "--repeats", repeats, "--seed", seed, "-o", simulated)
        neuroformer("evaluate", "--data", data, "--simulated", simulated, "--run", run, "--baseline", "glm",
                    "--seed", seed, "-o", out)
    return json.loads(out.read_text())


def summarise(reports):
    """row -> model -> figure -> {per_seed, mean, sd}; the noise ceiling per row (None where the
    row has too few recorded trials of a movie for one)."""
    table = {}
    for row in reports[0]["rows"]:
        ceiling = [r["rows"][row]["noise_ceiling"].get("psth_r_ceiling_median") for r in reports]
        table[row] = {"noise_ceiling": None if None in ceiling else float(np.mean(ceiling))}
        for model in ("neuroformer", "glm"):
            table[row][model] = {f: over_seeds([r["rows"][row][model][f] for r in reports]) for f in FIGURES}
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--workdir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml",
                        help="model config (default: the demo's, the held-out likelihood benchmark's)")
    parser.add_argument("--steps", type=positive_int, help="training steps (default: the config's)")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="a tiny recording, 3 steps, 1 repeat")
    args = parser.parse_args()
    seeds = args.seeds
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = synthetic_recording(args.workdir / "recording.h5", args.quick)
    config = config_file(args.config, args.workdir / "config.yaml", 3 if args.quick else args.steps,
                         eval_batches=2 if args.quick else None)
    cfg = yaml.safe_load(config.read_text())
    steps = cfg["train"]["max_steps"]
    table = summarise([run_seed(data, config, seed, args.workdir, 1 if args.quick else 4) for seed in seeds])
    for row, r in table.items():
        for model in ("neuroformer", "glm"):
            m = r[model]
            print(f"{row:<16} {model:<12} PSTH r {m['psth_r_median']['mean']:.3f} ± {m['psth_r_median']['sd']:.3f}  "
                  f"rate ×{m['rate_ratio']['mean']:.2f}  bits/spike {m['bits_per_spike']['mean']:.3f}")
        print(f"{row:<16} noise ceiling {r['noise_ceiling']}", flush=True)
    out = args.workdir / "closed_loop.json"
    write_result(out, {"table": table, "seeds": seeds, "steps": steps, "model_config": cfg}, config=vars(args), seed=seeds)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
