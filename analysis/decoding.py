"""Multitask decoding of running speed and gaze (phi, theta) on the synthetic recording.

Stages, each skipped when its output exists (an interrupted run resumes):
1. joint: Neuroformer with behaviour heads trained with the spike objective, beside every
   baseline (ridge, Lasso, GLM, MLP, bidirectional GRU) -> OUT/joint.json;
2. probes: a spikes-only model pretrained on the training split (no labels), linear probes of
   its frozen representations -> OUT/probe.json;
3. few-shot: label fractions (nested blocks of training time) x seeds, finetuned from the
   pretrained model vs trained from random initialisation, linear probes of the frozen pretrained
   vs randomly initialised model, ridge at each fraction -> OUT/few_shot/, OUT/few_shot.png;
4. ceiling: a ridge read-out of the generator's noise-free log rates (its truth file), scored
   the same way: what a linear decoder could read with no spike noise -> OUT/ceiling.json;
5. new session: pretrained with labels on sessions 0..K-2 of a multi-session recording, adapted
   to the last session with few labels by its unit embeddings alone or by full finetuning
   -> OUT/sessions/.
Training runs go side by side, `--jobs` processes sharing the cores (one thread each on a machine
with as many cores): small models gain little from a second thread and much from a second run.
Figures beside each; OUT/summary.json gathers the tables, each stage's run time (seconds; stages
overlap) and the study's wall time ("total").

    python analysis/decoding.py -o runs/decoding              # full run: 77.6 min on 2 CPU cores (BENCHMARKS.md)
    python analysis/decoding.py --quick -o /tmp/decoding      # tiny recording and model (the test)
"""
import argparse
import ctypes
import json
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

import neuroformer.decoders
from neuroformer.assembly import window_spec
from neuroformer.checkpoints import checkpoint_file, load_checkpoint
from neuroformer.config import load_config
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.decoding import (decode, decode_config, decode_samples, linear_readout, probe_features, probe_results,
                                split_samples)
from neuroformer.data.recording import open_recording
from neuroformer.io import atomic_path
from neuroformer.plots import subplots
from neuroformer.provenance import write_result
from neuroformer.training import RunOptions, train

TARGETS = ["running.speed", "eye.phi", "eye.theta"]
MODELS = ("pretrained", "random init", "pretrained, heads only", "random init, heads only", "pretrained probe",
          "random init probe", "ridge")                                              # few-shot rows
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "decoding.yaml"
QUICK_RECORDING = dict(n_neurons=30, trial_length=4.0, n_movies=2, n_trials=4, n_heldout_movies=1, heldout_trials=2)
QUICK_MODEL = {"width": 32, "heads": 2, "decoder_layers": 1, "dropout": 0.0, "backbone": {"patch": 16}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny recording and model, few steps (for tests)")
    parser.add_argument("--steps", type=int, help="steps of joint training and pretraining (default the config's)")
    parser.add_argument("--finetune-steps", type=int, help="steps of each few-shot and adaptation run (default 200)")
    parser.add_argument("--fractions", default="0.01,0.1,1", help="label fractions of the few-shot curve")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the few-shot curve")
    parser.add_argument("--few-shot-trainable", default="all",
                        help="what the few-shot runs train: all, heads (behaviour read-out on a frozen body) or both")
    parser.add_argument("--session-fraction", type=float, default=0.1, help="labels of the new session")
    parser.add_argument("--trials", type=int, default=10, help="trials of each training movie in the recording")
    parser.add_argument("--stages", default="joint,probe,few_shot,ceiling,new_session")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="training runs side by side, sharing the cores (default: one per core)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs: {args.jobs} runs side by side (at least 1)")
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (10 if args.quick else None)
    ft_steps = args.finetune_steps or (6 if args.quick else 200)
    fractions = [float(f) for f in args.fractions.split(",")] if not args.quick else [0.5, 1.0]
    seeds = range(1 if args.quick else args.seeds)
    config = _config(out, args.quick)
    recording = dict(QUICK_RECORDING if args.quick else {"n_trials": args.trials})
    rec = out / "synthetic.h5"
    if not rec.exists():
        write_synthetic(rec, SyntheticConfig(**recording))
    baselines = ("ridge", "gru") if args.quick else ("ridge", "lasso", "glm", "mlp", "gru")
    stages = args.stages.split(",")
    pretrained = out / "pretrain"
    summary, seconds, tasks = {}, {}, {}
    start = time.perf_counter()
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker,
                             initargs=(threads, 20 if args.quick else None, os.getpid())) as pool:
        # the longest chain first: pretraining, then the probe and few-shot runs that start from it
        if {"probe", "few_shot"} & set(stages):         # resumed to its last step; done, it returns at once
            tasks["pretrain"] = pool.submit(_timed, pretrain, config, rec, pretrained, steps)
        if "joint" in stages:
            tasks["joint"] = pool.submit(_timed, _report, rec, out / "joint.json", config=config, steps=steps,
                                         baselines=baselines)
        if "new_session" in stages:
            tasks["new_session"] = pool.submit(_timed, new_session, out, config, recording, steps, ft_steps,
                                               0.5 if args.quick else args.session_fraction)
        if "ceiling" in stages:
            summary["ceiling"], seconds["ceiling"] = _timed(_cached, out / "ceiling.json", lambda p: rate_ceiling(rec, p))
        if "pretrain" in tasks:
            seconds["pretrain"] = tasks.pop("pretrain").result()[1]
        if "probe" in stages:
            tasks["probe"] = pool.submit(_timed, _report, rec, out / "probe.json", run=pretrained, mode="probe",
                                         baselines=())
        if "few_shot" in stages:
            summary["few_shot"], seconds["few_shot"] = few_shot(pool, rec, out, config, pretrained, fractions, seeds,
                                                                ft_steps, args.few_shot_trainable.split(","))
            few_shot_figure(summary["few_shot"], out / "few_shot.png")
        for stage, task in tasks.items():
            result, seconds[stage] = task.result()
            summary[stage] = result["results"] if stage in ("joint", "probe") else result
    seconds["total"] = round(time.perf_counter() - start, 1)
    summary["seconds"] = seconds
    write_result(out / "summary.json", summary, vars(args), list(seeds))
    print(json.dumps(_brief(summary), indent=1))


def _worker(threads, gru_steps, study_pid):
    """Set up a pool process: its share of the cores (and, --quick, a short GRU baseline); it ends
    with the study's process, so a killed study leaves no run writing into the output that a
    resumed study would then share."""
    _end_with_parent(study_pid)
    torch.set_num_threads(threads)
    if gru_steps:
        neuroformer.decoders.GRU_STEPS = gru_steps      # the pipeline is under test, not the GRU


def _end_with_parent(parent_pid):
    """Have the kernel send this process SIGTERM when its parent dies (Linux; prctl PR_SET_PDEATHSIG)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    if os.getppid() != parent_pid:                      # the parent died before the request took hold
        os._exit(1)


def _timed(make, *args, **kwargs):
    """make(*args, **kwargs) and its wall time in seconds (a run already done takes only its loading)."""
    start = time.perf_counter()
    result = make(*args, **kwargs)
    return result, round(time.perf_counter() - start, 1)


def pretrain(config, rec, run, steps):
    """A spikes-and-movie model trained on `rec` without any behaviour (the probe and few-shot start)."""
    cfg = load_config(config)
    cfg.modalities = {}                         # spikes and video only: no behaviour is seen
    train(cfg, [rec], RunOptions(run, max_steps=steps, resume=(run / "last.pt").exists()))


def _config(out, quick):
    """The decoding config (quick: a tiny model written beside the outputs)."""
    if not quick:
        return CONFIG
    raw = yaml.safe_load(CONFIG.read_text())
    raw["model"] = QUICK_MODEL
    raw["train"].update(batch_size=8, warmup_steps=2, eval_every=10, eval_batches=2, checkpoint_every=10)
    path = out / "quick.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cached(path, make):
    """The report at `path` (less its provenance), made by make(path) unless it exists."""
    if not path.exists():
        return make(path)
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "provenance"}


def _report(rec, path, **kwargs):
    """The decode report of TARGETS at `path`, made unless it exists (an interrupted study resumes)."""
    return _cached(path, lambda p: decode(rec, TARGETS, p, progress=False, **kwargs))


def few_shot(pool, rec, out, config, pretrained, fractions, seeds, ft_steps, trainable=("all",)):
    """Rows of test r per target, fraction, seed and model: finetuned from `pretrained` vs random
    init, training everything and/or the behaviour heads alone (`trainable`); ridge; linear probes
    of the frozen pretrained vs randomly initialised model's features. With the runs' seconds."""
    (out / "few_shot").mkdir(parents=True, exist_ok=True)
    probes = pool.submit(_timed, few_shot_probes, rec, out, pretrained, fractions, seeds)
    starts = (("pretrained", dict(mode="finetune", run=pretrained)), ("random init", dict(mode="joint", config=config)))
    runs = []
    for f in fractions:
        for seed in seeds:
            for (start, kw), learn in ((s, t) for t in trainable for s in starts):
                model = start if learn == "all" else f"{start}, {learn} only"
                name = model.replace(",", "").replace(" ", "_")
                first = seed == seeds[0] and start == "pretrained" and learn == trainable[0]
                runs.append((model, f, seed, pool.submit(
                    _timed, _report, rec, out / "few_shot" / f"{name}-f{f:g}-s{seed}.json", label_fraction=f,
                    steps=ft_steps, seed=seed, trainable=learn, baselines=("ridge",) if first else (), **kw)))
    rows, seconds = probes.result()
    for model, f, seed, run in runs:
        report, run_seconds = run.result()
        seconds += run_seconds
        for t in TARGETS:
            rows.append({"fraction": f, "seed": seed, "model": model, "target": t,
                         "test_r": report["results"][t]["neuroformer"]["test_r"]})
            if "ridge" in report["results"][t]:
                rows.append({"fraction": f, "seed": seed, "model": "ridge", "target": t,
                             "test_r": report["results"][t]["ridge"]["test_r"]})
    return rows, round(seconds, 1)


def few_shot_probes(rec, out, pretrained, fractions, seeds):
    """Rows of linear probes (all features, see `probe_features`) at each fraction and seed."""
    path = out / "few_shot" / "probes.json"
    if path.exists():
        return json.loads(path.read_text())["rows"]
    cfg = load_checkpoint(checkpoint_file(pretrained))[0]
    samples = decode_samples(open_recording(rec), TARGETS, window_spec(cfg), rec)
    rows = []
    for seed in seeds:     # the pretrained features do not depend on the seed: read once
        features = probe_features(pretrained, rec, samples, seed, "cpu", trained=seed == seeds[0])
        for f in fractions:
            table = probe_results(features, samples, f)
            rows += [{"fraction": f, "seed": seed, "model": model, "target": t, "test_r": table[row][t]["test_r"]}
                     for model, row in (("pretrained probe", "+ population vector"), ("random init probe", "random init"))
                     if row in table for t in TARGETS]
    write_result(path, {"rows": rows}, cfg, list(seeds))
    return rows


def few_shot_figure(rows, path):
    fig, axes = subplots(1, len(TARGETS), figsize=(4 * len(TARGETS), 3.2), squeeze=False)
    for ax, t in zip(axes[0], TARGETS):
        for model in (m for m in MODELS if any(r["model"] == m for r in rows)):
            pts = [r for r in rows if r["target"] == t and r["model"] == model]
            fr = sorted({r["fraction"] for r in pts})
            mean = [np.mean([r["test_r"] for r in pts if r["fraction"] == f]) for f in fr]
            sd = [np.std([r["test_r"] for r in pts if r["fraction"] == f]) for f in fr]
            ax.errorbar(np.array(fr) * 100, mean, yerr=sd, marker="o", ms=3, capsize=2, label=model,
                        ls="--" if "probe" in model else "-")
        ax.set_xscale("log")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("labelled training data (%)")
    axes[0, 0].set_ylabel("test Pearson r")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def rate_ceiling(rec, path):
    """Per target, a ridge read-out of the noise-free log rates (the truth file's 50 ms steps, the
    step holding each behaviour sample), chosen on validation and scored on test, written to `path`."""
    data = open_recording(rec)
    truth = np.load(rec.with_suffix(".truth.npz"))
    t, log_rate = truth["true_rate_times"], np.log(truth["true_rate"] + 1e-3)
    samples = {s: split_samples(data, TARGETS, s, 0.0, 0.0) for s in ("train", "valid", "test")}
    x = {s: log_rate[np.clip(np.searchsorted(t, v.times, side="right") - 1, 0, len(t) - 1)] for s, v in samples.items()}
    samples.update(targets=TARGETS, classes=[0] * len(TARGETS))
    result = {n: {k: v for k, v in c.items() if not k.startswith("_")} for n, c in linear_readout(x, samples).items()}
    write_result(path, result)
    return result


def new_session(out, config, recording, steps, ft_steps, fraction, sessions=3):
    """Pretrain with labels on all sessions but the last; adapt to the last one by unit
    embeddings alone or by full finetuning, with `fraction` of its labels."""
    paths = [out / "sessions" / f"synthetic_s{k}.h5" for k in range(sessions)]
    if not all(p.exists() for p in paths):
        paths = write_synthetic(out / "sessions" / "synthetic.h5", SyntheticConfig(**recording, sessions=sessions))
    run = out / "sessions" / "pretrain"                 # resumed to its last step (an interrupted one has a best.pt)
    cfg = decode_config(load_config(config), open_recording(paths[0]), TARGETS)
    train(cfg, paths[:-1], RunOptions(run, max_steps=steps, resume=(run / "last.pt").exists(), select="behavior_error"))
    result = {}
    for trainable in ("units", "all"):
        report = _report(paths[-1], out / "sessions" / f"adapt-{trainable}.json", run=run, mode="finetune",
                         trainable=trainable, label_fraction=fraction, steps=ft_steps,
                         baselines=("ridge",) if trainable == "all" else ())
        result[trainable] = {t: report["results"][t] for t in TARGETS}
    mean_r = {k: float(np.mean([v[t]["neuroformer"]["test_r"] for t in TARGETS])) for k, v in result.items()}
    result["units_over_full"] = mean_r["units"] / mean_r["all"] if mean_r["all"] > 0 else None
    result["mean_test_r"] = mean_r
    return result


def _brief(summary):
    """Test r per table, rounded, and stage times, for the terminal."""
    def r(cell):
        return round(cell["test_r"], 3)
    brief = {}
    for key in ("joint", "probe"):
        if key in summary:
            brief[key] = {t: {m: r(c) for m, c in v.items()} for t, v in summary[key].items()}
    if "ceiling" in summary:
        brief["ceiling"] = {t: r(c) for t, c in summary["ceiling"].items()}
    if "new_session" in summary:
        brief["new_session"] = {"mean_test_r": summary["new_session"]["mean_test_r"],
                                "units_over_full": summary["new_session"]["units_over_full"]}
    if "few_shot" in summary:
        rows = summary["few_shot"]
        brief["few_shot"] = {f"{m} f={f:g}": round(float(np.mean([x["test_r"] for x in rows
                                                                  if x["model"] == m and x["fraction"] == f])), 3)
                             for m in MODELS for f in sorted({x["fraction"] for x in rows})
                             if any(x["model"] == m and x["fraction"] == f for x in rows)}
    brief["seconds"] = summary["seconds"]
    return brief


if __name__ == "__main__":
    main()
