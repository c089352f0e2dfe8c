"""Joint decoding, 3 seeds: Neuroformer trained jointly on spikes and behaviour against the
baselines of `neuroformer decode` on the same test samples, on one of these recordings:
- `synthetic` (default): running speed and gaze of the synthetic recording with 40 trials per
  training movie, configs/decoding.yaml with speed read out without the movie (`decode
  --without-movie speed`), 3,000 steps, against ridge (Wiener filter) and the MLP;
- `velocity`: hand velocity (x, y) of simulate/velocity_population.py's 180 units in 50 ms bins,
  imported as arrays, with the config `decode` derives from the recording (the decoding
  template; latent history at that density) at its 1,500 steps, against ridge and the GRU;
- `lif`: the same task with integrate-and-fire neurons (velocity_population.py --neurons lif:
  adapting, not the GLM's own-history form), the same config, steps and baselines;
- `calcium`: the synthetic recording seen through calcium imaging (`prepare --synthetic
  --calcium --events`): Neuroformer on its deconvolved events, ridge and the MLP on its binned
  dF/F traces (decode's baseline input for an events recording), same config and steps as
  `synthetic`; with `--calcium-tokens S` (route b) Neuroformer's behaviour heads also read the
  last S s of ΔF/F as calcium tokens (decode's derived config, the same decoding template; up to
  S = history + current, 0.55 s, every model scores the same test samples as route a).

For each seed, one `neuroformer decode` run (its report reused when present, its training
resumed when interrupted); then the mean and s.d. over seeds of every model's test r per
variable (all test samples, and trials of seen / of held-out movies), the best baseline per
variable, and whether Neuroformer reaches it. Writes one JSON and prints the table.

    python bench/joint_decoding.py -o runs/joint          # ~80 min on 2 cores (3 seeds, 3,000 steps)
    python bench/joint_decoding.py --recording velocity -o runs/joint_velocity
    python bench/joint_decoding.py --recording calcium -o runs/joint_calcium  # ~80 min
    python bench/joint_decoding.py --recording calcium --calcium-tokens 0.5 -o runs/joint_tokens
    python bench/joint_decoding.py --quick -o /tmp/joint  # what the test runs
    python bench/joint_decoding.py --recording velocity --config bench/configs/decoding_wide.yaml -o W  # another config
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import QUICK_SYNTHETIC, seed_list, neuroformer, over_seeds, synthetic_recording
from neuroformer.cli import positive_float, positive_int
from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
# without_movie: targets read out without the movie (decode --without-movie): the movie does not cause running
RECORDINGS = {"synthetic": dict(targets=("speed", "phi", "theta"), steps=3000, baselines="ridge,mlp",
                                 config=ROOT / "configs" / "decoding.yaml", without_movie=("speed",)),
              "calcium": dict(targets=("speed", "phi", "theta"), steps=3000, baselines="ridge,mlp",
                              config=ROOT / "configs" / "decoding.yaml", without_movie=("speed",)),
              "velocity": dict(targets=("hand_vx", "hand_vy"), steps=None, baselines="ridge,gru", config=None,
                               neurons="glm", without_movie=())}
RECORDINGS["lif"] = {**RECORDINGS["velocity"], "neurons": "lif"}       # the same task, other neurons
SCORES = ("test_r", "test_r_seen_stimuli", "test_r_novel_stimuli")


def velocity_recording(path, quick, neurons):
    """simulate/velocity_population.py's arrays (of `neurons`) imported at `path` (made unless there)."""
    if not path.exists():
        arrays = path.with_suffix(".npz")
        subprocess.run([sys.executable, str(ROOT / "simulate" / "velocity_population.py"), "-o", str(arrays),
                        "--neurons", neurons, *(["--units", "20", "--minutes", "2"] if quick else [])],
                       check=True, capture_output=True)
        neuroformer("prepare", arrays, "--bin-size", 0.05, "--behavior", "hand_vx=0.05", "--behavior", "hand_vy=0.05",
                    "-o", path)
    return path


def decode(data, recording, seed, steps, baselines, workdir, config=None, calcium_tokens=None):
    """One seed's decode report (trained and scored unless its report is there); `config`
    replaces the recording's; `calcium_tokens` (s) makes decode derive its config with them."""
    out, spec = workdir / f"joint_s{seed}.json", RECORDINGS[recording]
    config = config or (None if calcium_tokens else spec["config"])
    if not out.exists():
        neuroformer("decode", "--data", data, *[a for t in spec["targets"] for a in ("--target", t)],
                    *(["--config", config] if config else []), *(["--steps", steps] if steps else []),
                    *(["--calcium-tokens", calcium_tokens] if calcium_tokens else []),
                    *[a for t in spec["without_movie"] for a in ("--without-movie", t)],
                    "--seed", seed, "--baselines", baselines, "-o", out)
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
    parser.add_argument("--recording", choices=RECORDINGS, default="synthetic")
    parser.add_argument("--steps", type=positive_int, help="training steps of each joint run (default: the recording's)")
    parser.add_argument("--trials", type=positive_int, default=40, help="trials per training movie (synthetic)")
    parser.add_argument("--baselines", help="decode's --baselines (default: the recording's)")
    parser.add_argument("--config", type=Path, help="model config instead of the recording's")
    parser.add_argument("--calcium-tokens", type=positive_float, metavar="S",
                        help="calcium recording: decode's --calcium-tokens (route b)")
    parser.add_argument("--quick", action="store_true", help="a tiny recording, 3 steps, ridge only")
    args = parser.parse_args()
    if args.calcium_tokens and args.recording != "calcium":
        parser.error("--calcium-tokens: the calcium recording only")
    seeds = args.seeds
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = RECORDINGS[args.recording]
    if args.recording in ("synthetic", "calcium"):
        imaging = ["--calcium", "--events"] if args.recording == "calcium" else []
        size = QUICK_SYNTHETIC if args.quick else ("--trials", args.trials)
        data = synthetic_recording(args.workdir / "recording.h5", False, *size, *imaging)
    else:
        data = velocity_recording(args.workdir / "recording.h5", args.quick, spec["neurons"])
    steps, baselines = (3, "ridge") if args.quick else (args.steps or spec["steps"], args.baselines or spec["baselines"])
    table = summarise([decode(data, args.recording, seed, steps, baselines, args.workdir, args.config, args.calcium_tokens)
                       for seed in seeds])
    for variable, row in table.items():
        for model, scores in row["models"].items():
            print(f"{variable:<14} {model:<26} test r {scores['test_r']['mean']:.3f} ± {scores['test_r']['sd']:.3f}")
        print(f"{variable:<14} best baseline {row['best_baseline']}: reached {row['reached']}", flush=True)
    out = args.workdir / "joint_decoding.json"
    write_result(out, {"recording": args.recording, "table": table, "seeds": seeds, "steps": steps, "baselines": baselines},
                 config=vars(args), seed=seeds)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
