"""Generation speed of two checkouts of the library (or of one at several batch sizes), their runs alternated in one session.

This machine's speed drifts by 10-20% within an hour (bench_generate.py's untouched naive rows
move that much between runs), so a before/after ratio of a change smaller than that needs its
runs interleaved: each round times one cached rollout (bench_generate.py's `measure`: the same
recording, untrained frequency-initialised model and trials) with the library of each checkout in
turn, each in its own process (checked to import that checkout's library), the order swapped
every round. Reported: every round's wall time, the mean per checkout, their ratio, and whether
both generated as many spikes (they should, unless a change moved rounding). With `--batches`,
one checkout's rollouts of the same trials at each batch size alternate instead (the spikes do
not depend on the batch size).

    git worktree add /tmp/before <commit>
    python bench/alternate_generate.py --trees /tmp/before,. --config published.yaml --batch 16 --seconds 4 -o W/ab.json
    python bench/alternate_generate.py --trees /tmp/before,. --trials 8 --repeats 2 -o W/ab.json   # trials side by side
    python bench/alternate_generate.py --trees /tmp/before,. --config glm --batch 16 --seconds 32 -o W/ab.json  # the GLM
    python bench/alternate_generate.py --trees . --batches 16,32,64 --trials 4 --repeats 16 -o W/batches.json
    python bench/alternate_generate.py --quick --trees .,. -o /tmp/ab.json       # what the test runs
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench_generate import GLM
from neuroformer.cli import positive_float, positive_int
from neuroformer.errors import InputError
from neuroformer.io import check_output
from neuroformer.provenance import write_result

HERE = Path(__file__).resolve().parent
CHILD = """
import json, sys
from pathlib import Path
from bench_generate import measure, synthetic_recording
import neuroformer
from neuroformer.provenance import git_commit
config, seconds, batch, repeats, trials, workdir, quick = sys.argv[1:]
row = measure(config, synthetic_recording(Path(workdir), quick == "1"), float(seconds), int(batch), True, int(repeats),
              int(trials))
print(json.dumps({**row, "library": neuroformer.__file__, "library_commit": git_commit()}))
"""


def timed(tree, batch, args):
    """One cached rollout with the library of checkout `tree` (a resolved path), `batch` rows at a
    time, in a fresh process: bench_generate's row."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(HERE)])}
    out = subprocess.run([sys.executable, "-c", CHILD, str(args.config), str(args.seconds), str(batch),
                          str(args.repeats or batch), str(args.trials), str(args.workdir.resolve()),
                          "1" if args.quick else "0"], env=env, cwd=tree,
                         capture_output=True, text=True)                  # (-c puts the working directory first)
    if out.returncode:
        sys.exit(f"alternate_generate: the run with {tree} failed:\n{out.stderr[-2000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(row["library"]).resolve().is_relative_to(tree):
        sys.exit(f"alternate_generate: the run for {tree} imported the library from {row['library']}")
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="two checkouts of the project, before,after (one with --batches)")
    parser.add_argument("--config", default="published.yaml", help=f"a config of configs/, or {GLM} (the Poisson GLM's rollout)")
    parser.add_argument("--batch", type=positive_int, default=16, help="rows generated at once")
    parser.add_argument("--batches", type=batch_list, help="batch sizes to alternate, e.g. 16,64, instead of checkouts")
    parser.add_argument("--repeats", type=positive_int, help="repeats of each trial (default: --batch, or the largest of --batches)")
    parser.add_argument("--trials", type=positive_int, default=1, help="the recording's first trials (it has 8; --quick's 5)")
    parser.add_argument("--seconds", type=positive_float, default=4.0, help="simulated seconds of the trial")
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neuroformer-bench"))
    parser.add_argument("--quick", action="store_true", help="the tiny recording, small.yaml, 0.2 s, batch 2, 1 round")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    trees, wanted = args.trees.split(","), "one checkout" if args.batches else "two checkouts"
    if len(trees) != (1 if args.batches else 2) or not all(t and (Path(t) / "neuroformer" / "__init__.py").is_file()
                                                           for t in trees):
        parser.error(f"--trees: {wanted} of the project (each holding neuroformer/), got {args.trees!r}")
    trees = [Path(t).resolve() for t in trees]
    if args.batches:
        if args.config == GLM:
            parser.error("--batches: the GLM rolls out every (trial, repeat) at once; it has no batch size")
        args.repeats = args.repeats or max(args.batches)
    if args.quick:
        args.config, args.seconds, args.batch, args.rounds = "small.yaml", 0.2, 2, 1
    if args.config != GLM:
        args.config = HERE.parent / "configs" / args.config
        if not args.config.is_file():
            parser.error(f"--config: {args.config.name!r} is not a config of {args.config.parent} (nor {GLM})")
    try:
        check_output(args.out)
        check_output(args.workdir, option="--workdir", folder=True)
    except InputError as err:
        parser.error(str(err))
    args.workdir.mkdir(parents=True, exist_ok=True)
    variants = ({f"batch {b}": (trees[0], b) for b in args.batches} if args.batches
                else {"before": (trees[0], args.batch), "after": (trees[1], args.batch)})
    runs = {name: [] for name in variants}
    for i in range(args.rounds):
        for name in list(variants)[::1 if i % 2 == 0 else -1]:                  # ABBA: none always runs first
            runs[name].append(timed(*variants[name], args))
            print(f"round {i + 1} {name}: {runs[name][-1]['wall_s']:.2f} s, {runs[name][-1]['spikes']} spikes", flush=True)
    mean = {name: float(np.mean([r["wall_s"] for r in rows])) for name, rows in runs.items()}
    same = len({r["spikes"] for rows in runs.values() for r in rows}) == 1           # (counts, not the spikes)
    first = next(iter(mean))
    print(", ".join(f"{name} {m:.2f} s" for name, m in mean.items()) + ": " +
          ", ".join(f"{name} / {first} {m / mean[first]:.3f}" for name, m in list(mean.items())[1:]) +
          ("" if same else " (the spike counts differ)"))
    ratios = {"after_over_before": mean["after"] / mean["before"]} if not args.batches else {
        "over_first": {name: m / mean[first] for name, m in mean.items()}}
    write_result(args.out, {"trees": {name: {"path": str(tree), "commit": runs[name][0]["library_commit"]}
                                      for name, (tree, _) in variants.items()},
                            "runs": runs, "mean_wall_s": mean, **ratios, "same_spike_counts": same}, vars(args), 0)


def batch_list(text):
    """An argparse type: at least two comma-separated batch sizes (integers >= 1), e.g. 16,64."""
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) < 2 or min(sizes) < 1 or len(set(sizes)) < len(sizes):
        raise argparse.ArgumentTypeError(f"must be two or more different comma-separated integers >= 1, got {text!r}")
    return sizes


if __name__ == "__main__":
    main()
