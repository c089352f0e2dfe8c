"""The Wiener filter inside a decoding run, alone, at every ridge penalty: which one each criterion would choose.

For a trained `neuroformer decode` run, each target's filter (its chosen input: counts or
innovations) is refitted at every penalty the fit tries (`wiener.ALPHAS`) on the run's training
windows, and scored without the transformer: the fit's own loss (`wiener.ValidTrace.loss`, as
the library chooses now), validation mean squared error (standardised values; its criterion before
2026-12-06), validation r on every validation sample, unsmoothed and after the smoothing
chosen on validation (the ridge baseline's criterion), and the test r after that smoothing (as
`decode` scores). Runs trained on the whole training split only
(decode's joint runs).

    python bench/filter_penalties.py --run W/joint_s0/joint-f1-s0 --data W/recording.h5 -o penalties.json
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from neuroformer.assembly import window_spec
from neuroformer.checkpoints import load_model
from neuroformer.decoding import choose, decode_samples, neuroformer_predictions, scores
from neuroformer.errors import InputError
from neuroformer.provenance import write_result
from neuroformer.training import tiling_windows
from neuroformer.wiener import ALPHAS, design_losses, set_filter


def penalty_table(run, data_path):
    """{target: {"input", "rows": [{penalty, fit_loss, valid_mse, valid_r, valid_r_smoothed, test_r}]}}."""
    cfg, model, dataset, recordings = load_model(Path(run) / "best.pt", [data_path], "cpu")
    rid, spec, targets = recordings.recording_ids[0], dataset.spec, list(model.wiener_targets)
    samples = decode_samples(recordings.get_recording(rid), targets, window_spec(cfg), data_path)
    windows = tiling_windows(recordings, spec, "train")
    valid = tiling_windows(recordings, spec, "valid")
    batches, valid_batches = ([w[i:i + cfg.train.batch_size] for i in range(0, len(w), cfg.train.batch_size)]
                              for w in (windows, valid))
    reads = {name: bool(model.wiener_innovation[k]) for k, name in enumerate(targets)}
    paths = {}
    for innovations in sorted(set(reads.values())):
        for name, fitted in design_losses(model, dataset, batches, valid_batches, innovations, "refitting").items():
            if reads[name] == innovations:
                paths[name] = fitted
    table = {name: {"input": "innovations" if reads[name] else "counts", "rows": []} for name in paths}
    for i, alpha in enumerate(ALPHAS):
        for name, (path, _) in paths.items():
            set_filter(model, name, *path.fit(alpha), reads[name])
        pv, pt = (neuroformer_predictions(model, dataset, rid, samples[s], targets, wiener=True) for s in ("valid", "test"))
        unsmoothed = scores(pv, samples["valid"].values)[0]
        chosen = choose([({}, pv, pt)], samples["valid"], samples["test"], targets)
        for name in paths:
            k, sd = targets.index(name), float(model.behavior_stats[model.var_index[name], 1])
            mse = float(np.mean(((pv[:, k] - samples["valid"].values[:, k]) / sd) ** 2))
            table[name]["rows"].append(dict(penalty=float(alpha), fit_loss=float(paths[name][1][i]), valid_mse=mse,
                                            valid_r=unsmoothed[k],
                                            valid_r_smoothed=chosen[name]["valid_r"], test_r=chosen[name]["test_r"]))
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a decode run directory (its best.pt)")
    parser.add_argument("--data", type=Path, required=True, help="the recording it was trained on")
    parser.add_argument("-o", "--out", type=Path, required=True, help="JSON of the table")
    args = parser.parse_args()
    if args.out.resolve() in (args.data.resolve(), (args.run / "best.pt").resolve()):
        parser.error(f"-o {args.out}: would overwrite an input")
    try:
        table = penalty_table(args.run, args.data)
    except InputError as err:
        print("\n".join(f"error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        sys.exit(2)
    for name, entry in table.items():
        print(f"{name} ({entry['input']})")
        for row in entry["rows"]:
            print(f"  penalty {row['penalty']:>8g}  fit loss {row['fit_loss']:.4f}  valid MSE {row['valid_mse']:.4f}"
                  f"  valid r {row['valid_r']:.4f}  smoothed {row['valid_r_smoothed']:.4f}  test r {row['test_r']:.4f}")
    write_result(args.out, {"run": str(args.run), "data": str(args.data), "targets": table}, vars(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
