"""Component ablation on the synthetic recording: history only; + stimulus; + behaviour.

Each variant trains configs/small.yaml (the transformer alone at the demo's size) (same seed, same steps) and is scored on the whole
validation split (a sequential tiling of the held-out validation trials): NLL per spike and
unit top-1 accuracy, beside the empirical-frequency baseline (unit frequencies and Δ
histogram counted on the training split). Contrastive retrieval top-1 is reported for the
variants that see the stimulus, at batch 32 (chance 1/32).

    python bench/ablation.py            # full: 3 x 1500 steps, ~25 min on 2 cores
    python bench/ablation.py --quick    # ~1 min; what the test runs
"""
import argparse
import copy
import json
import time
from pathlib import Path

from neuroformer.baselines import frequency_baseline
from neuroformer.checkpoints import load_model
from neuroformer.config import Modality, Variable, load_config
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.provenance import write_result
from neuroformer.training import RunOptions, epoch_batches, evaluate, train, tiling_batches

ROOT = Path(__file__).resolve().parents[1]


def variants(base):
    """history only; + stimulus; + behaviour (speed and gaze as inputs)."""
    history = copy.deepcopy(base)
    history.window.frames, history.modalities, history.loss.contrastive = 0.0, {}, 0.0
    stimulus = copy.deepcopy(base)
    stimulus.modalities = {}
    behaviour = copy.deepcopy(base)
    behaviour.modalities = {"behavior": Modality({v: Variable(predict=False)
                                                  for v in ("running.speed", "eye.phi", "eye.theta")})}
    return {"history only": history, "+ stimulus": stimulus, "+ behaviour": behaviour}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neuroformer-ablation"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ablation.json")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = load_config(ROOT / "configs" / "small.yaml")
    syn = SyntheticConfig(n_neurons=30, trial_length=4, n_movies=1, n_trials=8, n_heldout_movies=1, heldout_trials=2) \
        if args.quick else SyntheticConfig()
    steps = args.steps or (30 if args.quick else 1500)
    base.train.eval_every = base.train.checkpoint_every = steps
    recording = args.workdir / ("quick.h5" if args.quick else "synthetic.h5")
    if not recording.exists():
        write_synthetic(recording, syn)

    rows, clock = {}, time.perf_counter()
    for name, cfg in variants(base).items():
        run = args.workdir / ("quick-" if args.quick else "") / name.replace(" ", "_").replace("+", "plus")
        train(cfg, [recording], RunOptions(run, max_steps=steps, seed=args.seed))
        cfg, model, dataset, recordings = load_model(run / "last.pt", [recording])
        valid = tiling_batches(recordings, dataset.spec, 32, limit=10**9)
        rows[name] = evaluate(model, dataset, valid, "cpu")
        print(name, json.dumps(rows[name]), flush=True)
    train_batches = epoch_batches(recordings, dataset.spec, "train", 32, args.seed, 0)
    rows["empirical frequencies"] = frequency_baseline(dataset, train_batches, valid, model.n_dt + 1)
    report = dict(steps=steps, seed=args.seed, recording=str(recording), quick=args.quick,
                  seconds=time.perf_counter() - clock, date=time.strftime("%Y-%m-%d"), rows=rows)
    write_result(args.out, report, vars(args), args.seed)
    _figure(rows, args.out.with_suffix(".png"))
    print(_table(rows))


def _table(rows):
    lines = ["| model | valid NLL per spike (nats) | unit top-1 | END accuracy | retrieval top-1 (chance 1/32) |",
             "|---|---|---|---|---|"]
    for name, m in rows.items():
        r = m.get("retrieval_top1")
        lines.append(f"| {name} | {m['nll_per_spike']:.3f} | {m['unit_accuracy']:.3f} | {m['end_accuracy']:.3f} | "
                     f"{'' if r is None else f'{r:.3f}'} |")
    return "\n".join(lines)


def _figure(rows, png):
    from neuroformer.plots import subplots

    fig, axes = subplots(1, 2, figsize=(9, 3))
    names = list(rows)
    axes[0].bar(names, [rows[n]["nll_per_spike"] for n in names])
    axes[0].set_ylabel("valid NLL per spike (nats)")
    axes[1].bar(names, [rows[n]["unit_accuracy"] for n in names])
    axes[1].set_ylabel("unit top-1 accuracy")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
