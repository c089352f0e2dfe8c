"""Joint decoding of running speed and gaze on the synthetic recording, 3 seeds: Neuroformer
trained jointly on spikes and behaviour (configs/decoding.yaml) against the baselines of
`neuroformer decode` (ridge/Wiener filter and MLP on lagged counts) on the same test samples.

For each seed, one `neuroformer decode` run (its report reused when present, its training
resumed when interrupted); then the mean and s.d. over seeds of every model's test r per
variable (all test samples, and trials of seen / of held-out movies), the best baseline per
variable, and whether Neuroformer reaches it. Writes one JSON and prints the table.

    python bench/joint_decoding.py -o runs/joint          # ~80 min on 2 cores (3 seeds, 3,000 steps)
    python bench/joint_decoding.py --quick -o /tmp/joint  # what the test runs
"""
import argparse
import json
from pathlib import Path


from _common import seed_list, neuroformer, over_seeds, synthetic_recording
from neuroformer.cli import positive_int
from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("speed", "phi", "theta")
SCORES = ("test_r", "test_r_seen_stimuli", "test_r_novel_stimuli")


def decode(data, seed, steps, baselines, workdir):
    """One seed's decode report (trained and scored unless its report is there)."""
    out = workdir / f"joint_s{seed}.json"
    if not out.exists():
        neuroformer("decode", "--data", data, *[a for t in TARGETS for a in ("--target", t)],
                    "--config", ROOT / "configs" / "decoding.yaml", "--steps", steps, "--seed", seed,
                    "--baselines", baselines, "-o", out)
    return json.loads(out.read_text())


def summarise(reports):
    """variable -> model -> score -> {per_seed, mean, sd}, plus each variable's best baseline."""
    table = {}
    for variable in reports[0]["results"]:
        models = {}
        for model in reports[0]["results"][variable]:
            rows = [r["results"][variable][model] for r in reports]
            models[model] = {s: over_seeds([row[s] for row in rows]) for s in SCORES if s in rows[0]}
        baselines = {m: v["test_r"]["mean"] for m, v in models.items() if not m.startswith("neuroformer")}
        best = max(baselines, key=baselines.get) if baselines else None
        table[variable] = {"models": models, "best_baseline": best,
                           "reached": bool(best is None or models["neuroformer"]["test_r"]["mean"] >= baselines[best])}
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--workdir", type=Path, required=True)
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    parser.add_argument("--steps", type=positive_int, default=3000, help="training steps of each joint run")
    parser.add_argument("--trials", type=positive_int, default=40, help="trials per training movie of the recording")
    parser.add_argument("--baselines", default="ridge,mlp", help="decode's --baselines")
    parser.add_argument("--quick", action="store_true", help="a tiny recording, 3 steps, ridge only")
    args = parser.parse_args()
    seeds = args.seeds
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = synthetic_recording(args.workdir / "recording.h5", args.quick, "--trials", args.trials)
    steps, baselines = (3, "ridge") if args.quick else (args.steps, args.baselines)
    table = summarise([decode(data, seed, steps, baselines, args.workdir) for seed in seeds])
    for variable, row in table.items():
        for model, scores in row["models"].items():
            print(f"{variable:<14} {model:<22} test r {scores['test_r']['mean']:.3f} ± {scores['test_r']['sd']:.3f}")
        print(f"{variable:<14} best baseline {row['best_baseline']}: reached {row['reached']}", flush=True)
    out = args.workdir / "joint_decoding.json"
    write_result(out, {"table": table, "seeds": seeds, "steps": steps, "baselines": baselines}, config=vars(args), seed=seeds)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
