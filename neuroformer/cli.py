"""The `neuroformer` command: parses arguments and calls the library, nothing more."""
import argparse
import json
import math
import sys
from pathlib import Path

from .errors import InputError


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line naming the option: `neuroformer: error: --trials: must be ...`."""

    def error(self, message):
        self.exit(2, f"neuroformer: error: {message.removeprefix('argument ')}\n")


def _number(kind, test, wanted):
    """An argparse type: text -> kind(text) if test(value), else a one-line error saying `wanted`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value
    parse.__name__ = wanted
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
count = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")
finite_float = _number(float, lambda v: True, "a finite number")
fraction = _number(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")

CALCIUM_TOKENS = ("route b for ΔF/F traces: the behaviour heads also read the last S s of every ROI's ΔF/F, "
                  "a calcium token per ROI and imaging frame (window.calcium)")


def device(text):
    """cpu, or cuda / cuda:N when that GPU exists."""
    if text == "cpu":
        return text
    kind, _, index = text.partition(":")
    if kind != "cuda" or not (index == "" or index.isdigit()):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    import torch

    if int(index or 0) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine "
                                         f"({torch.cuda.device_count()} CUDA devices)")
    return text


def _prepare(args):
    from .data.calcium import SPIKE_AMPLITUDE, CalciumModel
    from .data.importers import VideoSpec, prepare
    from .data.recording import parse_split
    from .data.synthetic import SyntheticConfig, write_synthetic, write_with_truth

    split = parse_split(args.split)
    if args.spike_amplitude is not None and not args.events:
        raise InputError("--spike-amplitude", ("spike amplitude", "applies to --events only"))
    if args.calcium and not args.synthetic:
        raise InputError("--calcium", ("calcium", "makes the synthetic recording a calcium one: needs --synthetic"))
    amplitude = (args.spike_amplitude or SPIKE_AMPLITUDE) if args.events else None
    if args.circuit:
        if amplitude is not None or args.calcium:
            raise InputError("--circuit", ("circuit", "a circuit has spikes: no calcium traces (--calcium, --events)"))
        from .data.circuits import HubCircuitConfig, hub_circuit

        kw = dict(n_neurons=args.neurons, seed=args.seed) | ({"duration": args.duration} if args.duration else {})
        paths = [write_with_truth(args.output, *hub_circuit(HubCircuitConfig(**kw)))]
    elif args.synthetic:
        if args.source:
            raise InputError(args.source, ("SOURCE", "give either a SOURCE file or --synthetic, not both"))
        kw = dict(n_neurons=args.neurons, seed=args.seed, sessions=args.sessions, trial_length=args.trial_length,
                  n_movies=args.movies)
        cfg = (SyntheticConfig.for_duration(args.duration, **kw) if args.duration
               else SyntheticConfig(**kw, **({"n_trials": args.trials} if args.trials else {})))
        if amplitude is not None and not args.calcium:
            raise InputError("--events", ("events", "the synthetic recording has spikes; --calcium makes it traces"))
        paths = write_synthetic(args.output, cfg, CalciumModel() if args.calcium else None, amplitude)
    else:
        if not args.source:
            raise InputError("prepare", ("SOURCE", "missing: give a .nwb/.npz/.pkl/.mat file, a suite2p folder "
                                                   "or --synthetic"))
        video = (VideoSpec(args.video, args.video_fps, args.video_start, args.video_per_trial)
                 if args.video else None)
        paths = [prepare(args.source, args.output, config=args.config, bin_size=args.bin_size,
                         behavior=args.behavior, frame_rate=args.frame_rate, video=video, split=split,
                         seed=args.seed, allow_pickle=args.allow_pickle, imaging_rate=args.imaging_rate,
                         spike_amplitude=amplitude)]
    for p in paths:
        print(f"wrote {p}")


def _info(args):
    from .data.info import format_summary, summarize

    for path in args.files:
        summary = summarize(path)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))


def _config(args):
    from .autoconfig import describe, write_config

    cfg = write_config(args.data, args.output, args.template, args.predict, args.calcium_tokens)
    print(f"wrote {args.output}: {describe(cfg)}")


def _train(args):
    from .autoconfig import config_for
    from .training import RunOptions, train

    metrics = train(config_for(args.data[0], args.config), args.data,
                    RunOptions(args.output, args.max_steps, args.seed, args.device, args.resume,
                               overwrite=args.overwrite))
    if metrics:
        print(json.dumps(metrics, indent=2))


def _simulate(args):
    from .generation import Sampling
    from .rollouts import SimulationOptions, simulate
    from .simulations import save_nwb, save_simulation

    trials = None if args.trials is None else _int_list(args.trials, "--trials")
    opts = SimulationOptions(split=args.split, trials=trials, repeats=args.repeats, seed=args.seed,
                             history=args.history, batch=args.batch, cache=not args.no_cache, device=args.device,
                             sampling=Sampling(args.temperature, args.top_k, args.top_p, args.max_spikes))
    sim = simulate(args.run, args.data, opts)
    print(f"wrote {save_simulation(sim, args.output)}: {len(sim.timestamps)} spikes, "
          f"{len(sim.trials['index'])} trials x {sim.repeats} repeats")
    if sim.attrs["truncated_windows"]:
        print(f"warning: {sim.attrs['truncated_windows']} windows reached --max-spikes {args.max_spikes} "
              "and were cut short", file=sys.stderr)
    if args.nwb:
        print(f"wrote {save_nwb(sim, args.nwb)}")


def _evaluate(args):
    from .evaluate import evaluate_simulation, format_comparison

    report = evaluate_simulation(args.data, args.simulated, args.output, run=args.run, baseline=args.baseline,
                                 device=args.device, psth_bin=args.psth_bin, seed=args.seed)
    print(format_comparison(report["summary"]))
    print(f"wrote {args.output} and figures {', '.join(report['figures'])}")


def _score(args):
    from .scoring import score

    report = score(args.run, args.data, args.output, split=args.split, baseline=args.baseline, device=args.device)
    print(f"{'row':<18}{'model':<13}{'spikes':>9}{'nll/spike':>11}{'bits/spike':>12}")
    for name, row in report["rows"].items():
        for model in ("neuroformer", "glm"):
            if model in row:
                r = row[model]
                print(f"{name:<18}{model:<13}{row['n_spikes']:>9}{r['nll_per_spike']:>11.3f}{r['bits_per_spike']:>12.3f}")
    print(f"wrote {args.output} and {report['figure']}")


def _connectivity(args):
    from .connectivity import extract_connectivity, format_scores

    result = extract_connectivity(args.run, args.data, args.output, split=args.split, windows=args.windows,
                                  perturbation_windows=args.perturbation_windows, combine=args.combine,
                                  baseline=args.baseline, device=args.device)
    if result["scores"]:
        print("against the true coupling (off-diagonal):")
        print(format_scores(result["scores"]))
    print(f"wrote {args.output} and figures {', '.join(result['figures'])}")


def _decode(args):
    from .decoding import decode, format_report

    baselines = tuple(b for b in args.baselines.split(",") if b) if args.baselines else ()
    report = decode(args.data, args.target, args.output, run=args.run, mode=args.mode, config=args.config,
                    label_fraction=args.label_fraction, baselines=baselines, steps=args.steps, seed=args.seed,
                    device=args.device, bin_size=args.bin, trainable=args.trainable, calcium=args.calcium_tokens,
                    without_movie=args.without_movie)
    print(format_report(report))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


def _report(args):
    from .report import write_report

    print(f"wrote {write_report(args.directory, args.output)}")


def _int_list(text, flag):
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError(flag, ("trials", f"expected comma-separated trial indices, got {text!r}")) from None


def _demo(args):
    from .demo import run_demo

    run_demo(args.output, seed=args.seed, max_steps=args.max_steps, repeats=args.repeats, calcium=args.calcium)


def build_parser():
    parser = OneLineParser(prog="neuroformer", description=__doc__.split(":")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("prepare", help="import a recording (NWB, array dictionary, video) or make a synthetic one")
    p.add_argument("source", nargs="?", help=".nwb, an array dictionary (.npz, .pkl, .mat) or a suite2p plane folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="output recording (.h5)")
    p.add_argument("--config", help="data config YAML for an array dictionary (original keys)")
    p.add_argument("--bin-size", type=positive_float, help="bin width (s) of the binned spike counts")
    p.add_argument("--behavior", action="append", default=[], metavar="NAME=DT",
                   help="a behaviour variable of the array dictionary and its sample interval (s); repeatable")
    p.add_argument("--frame-rate", type=positive_float, help="frame rate (Hz) of the array dictionary's `frames`")
    p.add_argument("--imaging-rate", type=positive_float,
                   help="imaging frame rate (Hz) of calcium traces: the array dictionary's `traces`, a suite2p folder")
    p.add_argument("--events", action="store_true",
                   help="deconvolve calcium traces into spike-like events (OASIS), stored as the spikes")
    p.add_argument("--spike-amplitude", type=positive_float,
                   help="deconvolved ΔF/F of one event (--events; default 0.07: see docs/import.md)")
    p.add_argument("--video", help="video file (mp4/avi) shown during the recording")
    p.add_argument("--video-fps", type=positive_float, help="video frame rate (Hz); default: the file's")
    p.add_argument("--video-start", type=finite_float, default=0.0, help="time (s) of the video's first frame")
    p.add_argument("--video-per-trial", action="store_true",
                   help="the video is shown at the start of every trial (stored once)")
    p.add_argument("--split", default="0.7,0.1,0.2",
                   help="train,valid,test fractions: of trials when there are trials, else contiguous time blocks")
    p.add_argument("--seed", type=count, default=0, help="seed for splits, spike placement in bins, synthetic data")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a .pkl source: loading a pickle runs any code it holds, so only for files you trust")
    g = p.add_argument_group("synthetic recording")
    g.add_argument("--synthetic", action="store_true", help="make the built-in synthetic recording")
    g.add_argument("--neurons", type=positive_int, default=100)
    g.add_argument("--duration", type=positive_float, help="total duration (s); sets the trials per training movie")
    g.add_argument("--movies", type=positive_int, default=3, help="training movies (default 3)")
    g.add_argument("--trials", type=positive_int, help="trials of each training movie (default 10)")
    g.add_argument("--trial-length", type=positive_float, default=10.0, help="movie length (s)")
    g.add_argument("--sessions", type=positive_int, default=1, help="sessions drawn from one population")
    g.add_argument("--calcium", action="store_true", help="calcium imaging instead: the spikes through an indicator "
                                                          "model as 30 Hz ΔF/F traces (spikes in OUT.truth.npz)")
    g.add_argument("--circuit", choices=["hub"], help="a ground-truth circuit instead (spontaneous activity, "
                                                      "true coupling in OUT.truth.npz; --neurons, --duration)")
    p.set_defaults(func=_prepare)

    p = verbs.add_parser("info", help="summarise a recording file")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)

    p = verbs.add_parser("config", help="write a config that fits a recording: its behaviour variables, "
                                        "no frames without a movie")
    p.add_argument("--data", required=True, type=Path, help="recording (.h5)")
    p.add_argument("--template", default="demo", help="shipped config to start from (see configs/; default demo)")
    p.add_argument("--predict", action="append", default=[], metavar="VAR",
                   help="a behaviour variable to decode (a target, not an input); repeatable")
    p.add_argument("--calcium-tokens", type=positive_float, default=0.0, metavar="S", help=CALCIUM_TOKENS)
    p.add_argument("-o", "--output", required=True, type=Path, help="config (.yaml)")
    p.set_defaults(func=_config)

    p = verbs.add_parser("train", help="train a model on one or more recordings")
    p.add_argument("--config", help="YAML config (see configs/); default: the demo config fitted to the first "
                                    "--data (see `neuroformer config`)")
    p.add_argument("--data", required=True, action="append", help="recording (.h5); repeat for several sessions")
    p.add_argument("-o", "--output", required=True, type=Path, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument("--max-steps", type=positive_int, help="override train.max_steps")
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--device", default="cpu", type=device, help="cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in RUN_DIR")
    p.set_defaults(func=_train)

    p = verbs.add_parser("simulate", help="roll out trials closed-loop with a trained model")
    p.add_argument("--run", required=True, type=Path, help="run directory (its best.pt) or a checkpoint file")
    p.add_argument("--data", required=True, help="recording (.h5) whose stimuli and behaviour drive the rollout")
    p.add_argument("-o", "--output", required=True, type=Path, help="simulated spikes (.h5)")
    p.add_argument("--nwb", type=Path, help="also write the spikes as NWB")
    p.add_argument("--split", default="test", help="simulate the trials of this split (default test)")
    p.add_argument("--trials", help="comma-separated trial indices instead of a split")
    p.add_argument("--repeats", type=positive_int, default=1, help="rollouts per trial")
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--history", default="generated", choices=["generated", "recorded"],
                   help="history of each window: the generated spikes (closed loop) or the recorded ones")
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top-k", type=count, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--top-p", type=fraction, default=1.0, help="nucleus sampling mass (1: all)")
    p.add_argument("--max-spikes", type=positive_int, default=1000, help="cap on spikes per window")
    p.add_argument("--batch", type=positive_int, default=64,
                   help="trials x repeats generated together (at most as many as there are)")
    p.add_argument("--no-cache", action="store_true", help="naive: re-run the whole model for every spike")
    p.add_argument("--device", default="cpu", type=device)
    p.set_defaults(func=_simulate)

    p = verbs.add_parser("evaluate", help="compare simulated trials with held-out recorded ones (and a GLM)")
    p.add_argument("--data", required=True, help="the recording the simulation was made from (.h5)")
    p.add_argument("--simulated", required=True, help="simulated spikes (.h5 from simulate)")
    p.add_argument("--run", type=Path, help="also score held-out recorded spikes under this model")
    p.add_argument("--baseline", choices=["glm"], help="fit, simulate and score the Poisson GLM baseline too")
    p.add_argument("-o", "--output", required=True, type=Path, help="report (.json); figures beside it")
    p.add_argument("--psth-bin", type=positive_float, default=0.05, help="PSTH bin (s)")
    p.add_argument("--seed", type=count, default=0, help="seed of the GLM's rollouts")
    p.add_argument("--device", default="cpu", type=device)
    p.set_defaults(func=_evaluate)

    p = verbs.add_parser("score", help="held-out log-likelihood of recorded spikes: bits/spike against "
                                       "a homogeneous Poisson process (and the GLM)")
    p.add_argument("--run", required=True, type=Path, help="run directory (its best.pt) or a checkpoint file")
    p.add_argument("--data", required=True, help="recording (.h5)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split to score (default test)")
    p.add_argument("--baseline", choices=["glm"], help="fit the Poisson GLM on the training split and score it too")
    p.add_argument("-o", "--output", required=True, type=Path, help="report (.json); figure beside it (.png)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_score)

    p = verbs.add_parser("connectivity", help="neuron x neuron matrices from attention, perturbation and baselines")
    p.add_argument("--run", required=True, type=Path, help="run directory (its best.pt) or a checkpoint file")
    p.add_argument("--data", required=True, help="recording (.h5)")
    p.add_argument("-o", "--output", required=True, type=Path, help="matrices (.npz); figures beside it")
    p.add_argument("--split", default="test", help="windows of this split (default test)")
    p.add_argument("--windows", type=positive_int, default=256, help="windows tiling the split for attention")
    p.add_argument("--perturbation-windows", type=count, default=32, help="windows for the perturbation (0: skip)")
    p.add_argument("--combine", default="mean", choices=["mean", "last", "grad"],
                   help="heads and layers: mean, last layer, or gradient-weighted (see README)")
    p.add_argument("--baseline", choices=["glm"], help="also fit the Poisson GLM and return its coupling")
    p.add_argument("--device", default="cpu", type=device)
    p.set_defaults(func=_connectivity)

    p = verbs.add_parser("decode", help="decode behaviour variables (Neuroformer and baselines, held-out scores)")
    p.add_argument("--data", required=True, type=Path, help="recording (.h5)")
    p.add_argument("--target", required=True, action="append", help="behaviour variable to decode; repeatable")
    p.add_argument("--run", type=Path, help="pretrained run directory or checkpoint (finetune, probe)")
    p.add_argument("--mode", default="joint", choices=["joint", "finetune", "probe", "baselines"],
                   help="baselines: only the baselines, on the samples that --config's windows hold")
    p.add_argument("--config", type=Path, help="model config for joint training (default: the decoding config "
                                                "fitted to the recording, see `neuroformer config`)")
    p.add_argument("--label-fraction", type=fraction, default=1.0,
                   help="train on the first fraction of the training split (nested blocks; few-shot)")
    p.add_argument("--baselines", default="ridge,lasso,glm,mlp,gru", help="comma-separated; '' for none")
    p.add_argument("--trainable", default="all", choices=["all", "units", "heads"],
                   help="train everything, only the unit embeddings (adapting to a new session), or only "
                        "the behaviour heads on a frozen body (few labels)")
    p.add_argument("--steps", type=positive_int, help="training steps (default: the config's)")
    p.add_argument("--bin", type=positive_float, default=0.05, help="bin width (s) of the baselines' spike counts (ΔF/F of a recording of calcium events)")
    p.add_argument("--calcium-tokens", type=positive_float, default=0.0, metavar="S",
                   help=CALCIUM_TOKENS + " (the derived config; with --config set window.calcium there)")
    p.add_argument("--without-movie", action="append", default=[], metavar="VAR",
                   help="a target read out without the movie (a variable the movie does not cause, such as "
                        "running: its read-out cannot learn it from which movie plays); repeatable")
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--device", default="cpu", type=device)
    p.add_argument("-o", "--output", required=True, type=Path, help="report (.json); figure and runs beside it")
    p.set_defaults(func=_decode)

    p = verbs.add_parser("report", help="one self-contained HTML page of the results under a folder")
    p.add_argument("directory", type=Path, help="folder searched recursively for recordings, runs and reports")
    p.add_argument("-o", "--output", type=Path, help="the page (.html); default DIRECTORY/report.html")
    p.set_defaults(func=_report)

    p = verbs.add_parser("demo", help="run the main job on the built-in synthetic recording")
    p.add_argument("-o", "--output", type=Path, default=Path("runs/demo"))
    p.add_argument("--seed", type=count, default=0)
    p.add_argument("--max-steps", type=positive_int, help="training steps (default: the demo config's 3,600; a "
                   "shorter run fits the GLM inside alone for half of them)")
    p.add_argument("--repeats", type=positive_int, default=2, help="closed-loop rollouts per test trial")
    p.add_argument("--calcium", action="store_true", help="the recording seen through calcium imaging: every "
                                                          "stage on the events deconvolved from its ΔF/F traces")
    p.set_defaults(func=_demo)
    return parser


# the arguments naming files: outputs are checked against inputs (and devices, folders,
# writability) before any work; train and demo write run folders
OUTPUTS = {"output": "-o", "nwb": "--nwb"}
INPUTS = {"source": "SOURCE", "data": "--data", "simulated": "--simulated", "run": "--run", "config": "--config",
          "video": "--video", "files": "FILES"}
FOLDER_OUTPUTS = ("train", "demo")


def _check_outputs(args):
    from .io import check_output

    inputs = []
    for dest, flag in INPUTS.items():
        value = getattr(args, dest, None)
        for path in (value if isinstance(value, list) else [value] if value else []):
            inputs.append((flag, Path(path)))
            if dest == "run" and Path(path).is_dir():
                inputs.append((flag, Path(path) / "best.pt"))
            if dest == "source" and Path(path).is_dir():          # a suite2p folder: each of its files
                inputs += [(flag, f) for f in sorted(Path(path).iterdir()) if f.is_file()]
    outputs = [(flag, Path(getattr(args, dest))) for dest, flag in OUTPUTS.items() if getattr(args, dest, None)]
    for i, (flag, path) in enumerate(outputs):
        check_output(path, inputs + outputs[:i], option=flag, folder=args.verb in FOLDER_OUTPUTS)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        args.func(args)
    except InputError as err:
        print("\n".join(f"error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
