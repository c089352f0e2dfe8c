"""Shared by the benchmarks."""
import argparse
import json
from pathlib import Path

import numpy as np
import yaml

QUICK_SYNTHETIC = ("--neurons", "20", "--trials", "3", "--trial-length", "2")   # what --quick records


def peak_rss_mb():
    """High-water resident memory of this process image (VmHWM; unlike getrusage's ru_maxrss it
    does not carry a parent's peak across fork and exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def seed_list(text):
    """An argparse type: comma-separated seeds (integers >= 0), e.g. 0,1,2."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        seeds = None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers >= 0, got {text!r}")
    return seeds


def neuroformer(*args):
    """Run one CLI verb in this process (no interpreter start per verb; its progress bars go to
    stderr); a failing verb stops the benchmark."""
    from neuroformer.cli import main

    argv = list(map(str, args))
    try:
        status = main(argv)
    except SystemExit as stop:                  # argparse's errors
        status = stop.code
    if status:
        raise RuntimeError(f"neuroformer {' '.join(argv)} failed (exit status {status})")


def trained_steps(run):
    """The last step a run's metrics.jsonl records (0 before the first)."""
    log = run / "metrics.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
    return max((r["step"] for r in rows), default=0)


def train(config, data, run, seed, steps):
    """`neuroformer train` to `steps` steps, resuming a run that stopped before them."""
    if not ((run / "last.pt").exists() and trained_steps(run) >= steps):
        neuroformer("train", "--config", config, "--data", data, "-o", run, "--seed", seed,
                    *(["--resume"] if (run / "last.pt").exists() else []))


def config_file(source, path, steps=None, eval_batches=None):
    """Write the config `source` to `path`, with `steps` training steps when given (evaluation and
    checkpoints every fifth of them, the GLM phase shortened to leave transformer steps) and
    `eval_batches` validation batches when given."""
    cfg = yaml.safe_load(Path(source).read_text())
    if eval_batches:
        cfg["train"]["eval_batches"] = eval_batches
    if steps:
        cfg["train"]["max_steps"] = steps
        cfg["train"]["eval_every"] = cfg["train"]["checkpoint_every"] = max(1, steps // 5)
        if cfg["train"].get("glm_steps", 0) >= steps:
            cfg["train"]["glm_steps"] = steps - 1
    Path(path).write_text(yaml.safe_dump(cfg))
    return Path(path)


def synthetic_recording(path, quick=False, *options):
    """`neuroformer prepare --synthetic` at `path` unless it is there (tiny with `quick`)."""
    if not Path(path).exists():
        neuroformer("prepare", "--synthetic", *(QUICK_SYNTHETIC if quick else options), "-o", path)
    return Path(path)


def over_seeds(values):
    """A figure's per-seed values with their mean and s.d."""
    return {"per_seed": list(values), "mean": float(np.mean(values)), "sd": float(np.std(values))}
