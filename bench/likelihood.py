"""Held-out bits/spike of the model against the library GLM, 3 seeds, on the synthetic recording
(trials of training movies and of held-out movies) and on the hub circuit; with `--recordings
calcium`, on the synthetic recording seen through calcium imaging (`prepare --synthetic
--calcium --events`: its deconvolved events, model and GLM on the same events).

For each recording and seed: train its config (configs/demo.yaml, the hub circuit
bench/configs/likelihood_circuit.yaml: the point-process model, its GLM fitted first with a ridge
chosen on validation NLL; `neuroformer train`), then `neuroformer score` on
the test split; the GLM (deterministic given the recording) is fitted and scored with seed 0 and
its row copied to the others. Finished runs and scores are reused, so an interrupted study
resumes. Writes one JSON (every row, per seed and the mean ± s.d. over seeds) and prints the table.

    python bench/likelihood.py -o runs/likelihood            # ~70 min on 2 cores (both recordings)
    python bench/likelihood.py --quick -o /tmp/likelihood    # what the test runs
    python bench/likelihood.py -o runs/lik --config synthetic=configs/small.yaml  # another config
"""
import argparse
import json
from pathlib import Path

import yaml

from _common import seed_list, QUICK_SYNTHETIC, config_file, neuroformer, over_seeds, train
from neuroformer.cli import positive_int
from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = {"synthetic": (["--synthetic"], ROOT / "configs" / "demo.yaml"),
              "hub": (["--circuit", "hub"], ROOT / "bench" / "configs" / "likelihood_circuit.yaml"),
              "calcium": (["--synthetic", "--calcium", "--events"], ROOT / "configs" / "demo.yaml")}


def prepare(name, workdir, quick):
    path = workdir / f"{name}.h5"
    if not path.exists():
        extra = (list(QUICK_SYNTHETIC) if name in ("synthetic", "calcium") else
                 ["--neurons", "20", "--duration", "60"]) if quick else []
        neuroformer("prepare", *RECORDINGS[name][0], *extra, "-o", path)
    return path


def run_one(name, data, config, seed, workdir):
    run, out = workdir / f"{name}_s{seed}", workdir / f"{name}_s{seed}_score.json"
    if not out.exists():
        train(config, data, run, seed, yaml.safe_load(config.read_text())["train"]["max_steps"])
        neuroformer("score", "--run", run, "--data", data, "-o", out, *(["--baseline", "glm"] if seed == 0 else []))
    return json.loads(out.read_text())


def summarise(reports):
    """row -> model -> {per_seed, mean, sd} of bits/spike (the GLM from seed 0's report)."""
    out = {}
    for row in reports[0]["rows"]:
        model = over_seeds([r["rows"][row]["neuroformer"]["bits_per_spike"] for r in reports])
        glm = reports[0]["rows"][row].get("glm", {}).get("bits_per_spike")
        out[row] = {"neuroformer": model,
                    "glm": glm, "n_spikes": reports[0]["rows"][row]["n_spikes"]}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--workdir", type=Path, required=True)
    parser.add_argument("--recordings", default="synthetic,hub")
    parser.add_argument("--seeds", type=seed_list, default=[0, 1, 2])
    parser.add_argument("--steps", type=positive_int, help="training steps (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="tiny recordings, 3 steps")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=PATH",
                        help="train recording NAME with this config instead of the benchmark's (repeatable)")
    args = parser.parse_args()
    configs = dict(c.split("=", 1) for c in args.config if "=" in c)
    if len(configs) != len(args.config) or set(configs) - set(RECORDINGS):
        parser.error(f"--config: NAME=PATH with NAME one of {', '.join(RECORDINGS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    steps = 3 if args.quick else args.steps
    seeds = args.seeds
    table = {}
    for name in args.recordings.split(","):
        if name not in RECORDINGS:
            parser.error(f"--recordings: unknown {name!r} ({', '.join(RECORDINGS)})")
        data = prepare(name, args.workdir, args.quick)
        config = config_file(configs.get(name, RECORDINGS[name][1]), args.workdir / f"{name}.yaml", steps)
        table[name] = summarise([run_one(name, data, config, seed, args.workdir) for seed in seeds])
        for row, r in table[name].items():
            m = r["neuroformer"]
            glm = "" if r["glm"] is None else f"  GLM {r['glm']:.3f}"             # seed 0's run scores the GLM
            print(f"{name:<10} {row:<16} Neuroformer {m['mean']:.3f} ± {m['sd']:.3f}{glm}", flush=True)
    write_result(args.workdir / "likelihood.json", {"table": table, "seeds": seeds, "steps": steps, "configs": configs},
                 config=vars(args), seed=seeds)
    print(f"wrote {args.workdir / 'likelihood.json'}")


if __name__ == "__main__":
    main()
