"""The Wiener filter inside a decoding run, alone, at every ridge penalty: which one each criterion would choose.

For a trained `neuroformer decode` run, each target's filter (its chosen input: counts or
innovations) is refitted at every penalty the fit tries (`wiener.ALPHAS`) on the run's training
windows, and scored without the transformer: the fit's own loss (1 - the cross-validated smoothed
r of `wiener.design_losses`, by which the library chooses since 2026-12-06), validation mean
squared error (standardised values; its criterion before), validation r on every validation
sample, unsmoothed and after the smoothing chosen on validation (the ridge baseline's
criterion), and the test r after that smoothing (as `decode` scores). Runs trained on the whole
training split only (decode's joint runs). Without a run (`--targets`, and `--config` as decode
takes it), the filter an untrained model of the config `decode` derives gets from the library as
it is now (its input chosen as training would choose it), in minutes instead of a training run's hour.

    python bench/filter_penalties.py --run W/joint_s0/joint-f1-s0 --data W/recording.h5 -o penalties.json
    python bench/filter_penalties.py --config configs/decoding.yaml --targets speed,phi,theta --data syn40.h5 -o p.json
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from neuroformer.assembly import build, window_spec
from neuroformer.autoconfig import config_for, resolve_names
from neuroformer.checkpoints import load_model
from neuroformer.data.recording import open_recording
from neuroformer.decoding import choose, decode_config, decode_samples, neuroformer_predictions, scores
from neuroformer.errors import InputError
from neuroformer.provenance import write_result
from neuroformer.training import tiling_windows
from neuroformer.wiener import ALPHAS, design_losses, fit_wiener, set_filter


def untrained(config, targets, data_path):
    """(config, model, dataset, recordings) of the config `decode` derives for `targets`, the
    model's Wiener filter fitted as training fits it."""
    data = open_recording(data_path)
    targets = resolve_names(data, targets, data_path)
    cfg = decode_config(config_for(data_path, config, "decoding", targets, 0.0), data, targets, str(config))
    recordings, dataset, model = build(cfg, [data_path])
    fit_wiener(model, dataset, tiling_windows(recordings, dataset.spec, "train"), cfg.train.batch_size)
    return cfg, model, dataset, recordings


def penalty_table(run, data_path, config=None, targets=None):
    """{target: {"input", "rows": [{penalty, fit_loss, valid_mse, valid_r, valid_r_smoothed, test_r}]}}
    of a decode run, or without one of an untrained model of `config` decoding `targets`."""
    cfg, model, dataset, recordings = (load_model(Path(run) / "best.pt", [data_path], "cpu") if run else
                                       untrained(config, targets, data_path))
    rid, spec, targets = recordings.recording_ids[0], dataset.spec, list(model.wiener_targets)
    samples = decode_samples(recordings.get_recording(rid), targets, window_spec(cfg), data_path)
    windows = tiling_windows(recordings, spec, "train")
    batches = [windows[i:i + cfg.train.batch_size] for i in range(0, len(windows), cfg.train.batch_size)]
    reads = {name: bool(model.wiener_innovation[k]) for k, name in enumerate(targets)}
    paths = {}
    for innovations in sorted(set(reads.values())):
        for name, fitted in design_losses(model, dataset, batches, innovations, "refitting").items():
            if reads[name] == innovations:
                paths[name] = fitted
    table = {name: {"input": "innovations" if reads[name] else "counts", "rows": []} for name in paths}
    for i, alpha in enumerate(ALPHAS):
        for name, (path, _) in paths.items():
            set_filter(model, name, *path.fit(alpha), reads[name])
        pv, pt = (neuroformer_predictions(model, dataset, rid, samples[s], targets, wiener=True)
                  for s in ("valid", "test"))
        unsmoothed = scores(pv, samples["valid"].values)[0]
        chosen = choose([({}, pv, pt)], samples["valid"], samples["test"], targets)
        for name in paths:
            k, sd = targets.index(name), float(model.behavior_stats[model.var_index[name], 1])
            mse = float(np.mean(((pv[:, k] - samples["valid"].values[:, k]) / sd) ** 2))
            table[name]["rows"].append(dict(penalty=float(alpha), fit_loss=float(paths[name][1][i]), valid_mse=mse,
                                            valid_r=unsmoothed[k],
                                            valid_r_smoothed=chosen[name]["valid_r"], test_r=chosen[name]["test_r"]))
    for entry in table.values():
        entry["fit_choice"] = min(entry["rows"], key=lambda row: row["fit_loss"])["penalty"]
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a decode run directory (its best.pt)")
    source.add_argument("--targets", help="without a run: the decoded variables, comma-separated")
    parser.add_argument("--config", type=Path, help="with --targets: decode's --config (default: its template)")
    parser.add_argument("--data", type=Path, required=True, help="the recording (the run's own)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="JSON of the table")
    args = parser.parse_args()
    if args.config and args.run:
        parser.error("--config: a run has its own")
    inputs = [args.data] + ([args.run / "best.pt"] if args.run else [args.config] if args.config else [])
    if args.out.resolve() in [p.resolve() for p in inputs]:
        parser.error(f"-o {args.out}: would overwrite an input")
    try:
        table = penalty_table(args.run, args.data, args.config, args.targets and args.targets.split(","))
    except InputError as err:
        print("\n".join(f"error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        sys.exit(2)
    for name, entry in table.items():
        print(f"{name} ({entry['input']})")
        for row in entry["rows"]:
            print(f"  penalty {row['penalty']:>8g}  fit loss {row['fit_loss']:.4f}  valid MSE {row['valid_mse']:.4f}"
                  f"  valid r {row['valid_r']:.4f}  smoothed {row['valid_r_smoothed']:.4f}  test r {row['test_r']:.4f}")
    write_result(args.out, {"run": args.run and str(args.run), "data": str(args.data), "targets": table}, vars(args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
