"""Hostile-input probe: run every verb of the CLI on bad input and classify each result.

    python bench/probe_inputs.py [--work DIR] [--out bench/results/probe_inputs.json] [--only SUBSTRING]

Classes: "clear error" (exit 2, one stderr line, no traceback, every protected input intact),
"traceback" (a traceback, or an exit status other than 0 and 2), "long error" (exit 2 in more
than one line), "silent acceptance" (exit 0 where an error was expected, or an input changed),
"sane" (exit 0 where the case documents a sane behaviour), "timeout". The JSON records the
command line, commit, date, machine and every case's result.
"""
import argparse
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from neuroformer.data.importers import write_video  # noqa: E402
from neuroformer.provenance import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240

TINY_CONFIG = {
    "window": {"current": 0.05, "history": 0.05, "frames": 0.1, "behavior": 0.05},
    "modalities": {"behavior": {"variables": {"running.speed": {"predict": False}, "eye.phi": {"predict": True}}}},
    "model": {"width": 16, "heads": 2, "history_layers": 1, "visual_layers": 1, "behavior_layers": 1,
              "decoder_layers": 1, "dropout": 0.0, "backbone": {"name": "patch", "patch": 16}},
    "train": {"batch_size": 4, "max_steps": 2, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2,
              "warmup_steps": 1},
}


class Evil:
    """A pickle whose loading runs code: it creates the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cli(*args, timeout=TIMEOUT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "neuroformer.cli", *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, "", time.perf_counter() - start
    return proc.returncode, proc.stderr, time.perf_counter() - start


def digest(path):
    path = Path(path)
    if path.is_dir():
        return sorted((str(p.relative_to(path)), digest(p)) for p in path.rglob("*") if p.is_file())
    if path.is_char_device() or path.is_fifo():
        return ("special", path.stat().st_rdev)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def backup(path, copy):
    """A copy of a regular file or folder (None for a device node)."""
    remove(copy)
    copy.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        return Path(shutil.copytree(path, copy))
    return Path(shutil.copy(path, copy)) if path.is_file() else None


def make_device(path):
    """A stand-in for /dev/null: a character device node as root, else a FIFO."""
    os.mknod(path, 0o666 | 0o020000, os.makedev(1, 3)) if os.geteuid() == 0 else os.mkfifo(path)


def remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def restore(copy, path):
    remove(path)
    if copy is None:
        make_device(path)
    elif copy.is_dir():
        shutil.copytree(copy, path)
    else:
        shutil.copy(copy, path)


def tamper(src, dst, **datasets):
    """A copy of recording `src` with some datasets replaced (key "a/b" written as a__b)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for key, values in datasets.items():
            key = key.replace("__", "/")
            del f[key]
            f[key] = values
    return dst


def make_fixtures(w):
    """Recording, config, trained run, simulation and malformed files under `w`."""
    w.mkdir(parents=True, exist_ok=True)
    steps = [("prepare", "--synthetic", "-o", w / "rec.h5", "--neurons", 12, "--trials", 3, "--movies", 2,
              "--trial-length", 2)]
    (w / "cfg.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    steps += [("train", "--config", w / "cfg.yaml", "--data", w / "rec.h5", "-o", w / "run"),
              ("simulate", "--run", w / "run", "--data", w / "rec.h5", "-o", w / "sim.h5", "--max-spikes", 20)]
    for args in steps:
        code, err, _ = cli(*args)
        if code != 0:
            sys.exit(f"fixture step {args[0]} failed:\n{err}")
    np.savez(w / "arrays.npz", spikes=np.random.default_rng(0).poisson(0.2, (4, 2000)),
             speed=np.zeros(100), short=np.zeros(5))
    with open(w / "evil.pkl", "wb") as f:
        pickle.dump(Evil(w / "PWNED"), f)
    with open(w / "plain.pkl", "wb") as f:
        pickle.dump({"spikes": np.ones((3, 500), np.int64)}, f)
    write_video(w / "clip.avi", np.zeros((10, 16, 16), np.uint8), 10.0)
    np.savez(w / "nan_counts.npz", spikes=np.full((2, 100), np.nan))
    (w / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (w / "text.h5").write_text("not hdf5")
    (w / "empty.h5").write_bytes(b"")
    (w / "list.yaml").write_text("- 1\n- 2\n")
    (w / "a_dir").mkdir(exist_ok=True)
    rec = w / "rec.h5"
    with h5py.File(rec, "r") as f:
        t, u, ids = f["spikes/timestamps"][()], f["spikes/unit_index"][()], f["units/id"][()]
    tamper(rec, w / "units_minus1.h5", spikes__unit_index=np.where(np.arange(len(u)) == 3, -1, u))
    tamper(rec, w / "units_big.h5", spikes__unit_index=np.where(np.arange(len(u)) == 3, 999, u))
    tamper(rec, w / "dup_ids.h5", units__id=np.array([ids[0]] * len(ids)))
    tamper(rec, w / "short_units.h5", spikes__unit_index=u[:-5])
    tamper(rec, w / "nan_times.h5", spikes__timestamps=np.where(np.arange(len(t)) == 4, np.nan, t))
    with h5py.File(w / "sim.h5", "r") as f:
        st, su = f["spikes/timestamps"][()], f["spikes/unit_index"][()]
    tamper(w / "sim.h5", w / "sim_nan.h5", spikes__timestamps=np.where(np.arange(len(st)) == 0, np.nan, st))
    tamper(w / "sim.h5", w / "sim_unit999.h5", spikes__unit_index=np.where(np.arange(len(su)) == 0, 999, su))
    tamper(w / "sim.h5", w / "sim_short.h5", spikes__unit_index=su[:-1])
    for name, edit in CONFIG_EDITS.items():
        raw = json.loads(json.dumps(TINY_CONFIG))
        section, key, value = edit
        raw.setdefault(section, {})[key] = value
        (w / f"cfg_{name}.yaml").write_text(yaml.safe_dump(raw))


CONFIG_EDITS = {
    "width0": ("model", "width", 0), "width_neg": ("model", "width", -16), "heads0": ("model", "heads", 0),
    "batch0": ("train", "batch_size", 0), "dropout15": ("model", "dropout", 1.5),
    "dtres0": ("window", "dt_res", 0.0), "current_neg": ("window", "current", -0.05),
    "history_neg": ("window", "history", -1.0), "lr_nan": ("train", "lr", float("nan")),
    "lr_neg": ("train", "lr", -1.0), "evalevery0": ("train", "eval_every", 0),
    "ckpt0": ("train", "checkpoint_every", 0), "evalbatches0": ("train", "eval_batches", 0),
    "workers_neg": ("train", "num_workers", -1), "mlp0": ("model", "mlp_ratio", 0),
    "patch0": ("model", "patch", 0), "decoder0": ("model", "decoder_layers", 0),
    "loss_nan": ("loss", "spikes", float("nan")), "warmup_neg": ("train", "warmup_steps", -1),
    "frames_inf": ("window", "frames", float("inf")), "gradclip0": ("train", "grad_clip", 0.0),
    "contrastive_neg": ("model", "contrastive_dim", -4), "maxsteps0": ("train", "max_steps", 0),
}


def cases(w):
    """(name, argv, expect, protected files, marker that must not appear). expect: error | ok."""
    rec, cfg, run, sim = w / "rec.h5", w / "cfg.yaml", w / "run", w / "sim.h5"
    syn = ["prepare", "--synthetic", "--neurons", 6, "--movies", 1, "--trial-length", 1, "--trials", 3]
    out = []

    def add(name, argv, expect="error", protect=(), marker=None):
        out.append((name, argv, expect, list(protect), marker))

    # prepare: code execution, outputs over inputs and devices, numbers
    add("prepare evil.pkl", ["prepare", w / "evil.pkl", "-o", w / "o_evil.h5", "--bin-size", 0.01],
        marker=w / "PWNED")
    add("prepare plain.pkl --allow-pickle", ["prepare", w / "plain.pkl", "-o", w / "o_pkl.h5", "--bin-size", 0.01,
                                             "--allow-pickle"], "ok")
    add("prepare a.npz -o a.npz", ["prepare", w / "arrays.npz", "-o", w / "arrays.npz", "--bin-size", 0.01],
        protect=[w / "arrays.npz"])
    add("prepare -o a character device", [*syn, "-o", w / "fakenull"], protect=[w / "fakenull"])
    add("prepare -o an existing folder", [*syn, "-o", w / "a_dir"], protect=[w / "a_dir"])
    add("prepare -o /proc/..", [*syn, "-o", "/proc/probe.h5"])
    add("prepare -o /sys/..", [*syn, "-o", "/sys/probe.h5"])
    add("prepare no source", ["prepare", "-o", w / "o.h5"])
    add("prepare missing source", ["prepare", w / "nope.npz", "-o", w / "o.h5", "--bin-size", 0.01])
    add("prepare .csv source", ["prepare", w / "cfg.yaml", "-o", w / "o.h5", "--bin-size", 0.01])
    add("prepare folder source", ["prepare", w / "a_dir", "-o", w / "o.h5", "--bin-size", 0.01])
    add("prepare source and --synthetic", [*syn, w / "arrays.npz", "-o", w / "o.h5"])
    for opt, values in {"--trials": [0, -1], "--sessions": [0, -2], "--movies": [0, -1], "--neurons": [0, -5],
                        "--duration": [-10, 0, "nan", "inf"], "--trial-length": [0, -1, "nan"],
                        "--seed": [-1]}.items():
        for v in values:
            add(f"prepare --synthetic {opt} {v}", [*syn, opt, v, "-o", w / "o.h5"])
    add("prepare --synthetic --trials 2 (empty valid)", ["prepare", "--synthetic", "--neurons", 6, "--trials", 2,
                                                         "--trial-length", 1, "-o", w / "o_t2.h5"], "ok")
    add("prepare --synthetic --trials 1 --movies 1", [*syn[:-2], "--trials", 1, "-o", w / "o.h5"])
    for split in ["nan,0.5,0.5", "0.5,0.5", "a,b,c", "-0.1,0.6,0.5", "1,0,0", "inf,0,0"]:
        add(f"prepare --split {split}", ["prepare", w / "arrays.npz", "-o", w / "o.h5", "--bin-size", 0.01,
                                         f"--split={split}"])
    for v in ["nan", 0, -0.01, "inf"]:
        add(f"prepare --bin-size {v}", ["prepare", w / "arrays.npz", "-o", w / "o.h5", "--bin-size", v])
    for v in [0, "nan", -5]:
        add(f"prepare --frame-rate {v}", ["prepare", w / "arrays.npz", "-o", w / "o.h5", "--bin-size", 0.01,
                                          "--frame-rate", v])
    for b in ["speed=0", "speed=nan", "speed=abc", "speed=-1", "=0.05", "nope=0.05"]:
        add(f"prepare --behavior {b}", ["prepare", w / "arrays.npz", "-o", w / "o.h5", "--bin-size", 0.01,
                                        "--behavior", b])
    add("prepare behaviour much shorter than the spikes", ["prepare", w / "arrays.npz", "-o", w / "o.h5",
                                                           "--bin-size", 0.01, "--behavior", "short=0.2"])
    add("prepare behaviour of the wrong length", ["prepare", w / "arrays.npz", "-o", w / "o.h5",
                                                  "--bin-size", 0.01, "--behavior", "speed=0.1"])
    add("prepare behaviour of the right length", ["prepare", w / "arrays.npz", "-o", w / "o_beh.h5",
                                                  "--bin-size", 0.01, "--behavior", "speed=0.2"], "ok")
    add("prepare --config binary", ["prepare", w / "arrays.npz", "-o", w / "o.h5", "--config", w / "binary.yaml"])
    add("prepare --config list", ["prepare", w / "arrays.npz", "-o", w / "o.h5", "--config", w / "list.yaml"])
    add("prepare --video missing", ["prepare", w / "arrays.npz", "-o", w / "o.h5", "--bin-size", 0.01,
                                    "--video", w / "nope.mp4"])
    for opt, v in [("--video-fps", 0), ("--video-fps", -1), ("--video-start", "nan"), ("--video-start", 1e6)]:
        add(f"prepare {opt} {v}", ["prepare", w / "arrays.npz", "-o", w / "o.h5", "--bin-size", 0.01,
                                   "--video", w / "nope.mp4", opt, v])

    for v in [1e6, -5, 0.5]:
        add(f"prepare --video clip.avi --video-start {v}", ["prepare", w / "arrays.npz", "-o", w / f"o_v{v}.h5",
                                                           "--bin-size", 0.01, "--video", w / "clip.avi",
                                                           "--video-start", v], "ok" if v == 0.5 else "error")
    add("prepare NaN counts", ["prepare", w / "nan_counts.npz", "-o", w / "o.h5", "--bin-size", 0.01])
    add("prepare -o inside a file", [*syn, "-o", w / "rec.h5" / "x.h5"], protect=[rec])
    add("prepare --circuit hub --neurons 0", ["prepare", "--circuit", "hub", "--neurons", 0, "-o", w / "o.h5"])

    # info
    for name in ["units_minus1", "units_big", "dup_ids", "short_units", "nan_times", "text", "empty"]:
        add(f"info {name}.h5", ["info", w / f"{name}.h5"])
    add("info a folder", ["info", w / "a_dir"])
    add("info missing file", ["info", w / "nope.h5"])
    add("info the simulation", ["info", sim])
    add("info the config", ["info", cfg])
    add("info a valid recording", ["info", rec], "ok")
    add("info a valid and a broken recording", ["info", rec, w / "units_big.h5"])

    # train
    base = ["train", "--config", cfg, "--data", rec]
    for v in [0, -3]:
        add(f"train --max-steps {v}", [*base, "-o", w / f"run_ms{v}", "--max-steps", v])
    add("train -o an existing run", [*base, "-o", run], protect=[run])
    add("train -o an existing file", [*base, "-o", rec], protect=[rec])
    add("train --resume without a run", [*base, "-o", w / "no_run", "--resume"])
    add("train --resume with another config", ["train", "--config", w / "cfg_width_neg.yaml", "--data", rec,
                                               "-o", run, "--resume"], protect=[run])
    add("train --resume with a wider model", ["train", "--config", w / "cfg_wide.yaml", "--data", rec,
                                              "-o", run, "--resume"], protect=[run])
    for name in CONFIG_EDITS:
        add(f"train config {name}", ["train", "--config", w / f"cfg_{name}.yaml", "--data", rec,
                                     "-o", w / f"run_{name}"])
    add("train config binary", ["train", "--config", w / "binary.yaml", "--data", rec, "-o", w / "run_b"])
    add("train config list", ["train", "--config", w / "list.yaml", "--data", rec, "-o", w / "run_l"])
    add("train config missing", ["train", "--config", w / "nope.yaml", "--data", rec, "-o", w / "run_m"])
    for dev in ["cuda", "tpu9", "cuda:7", "meta"]:
        add(f"train --device {dev}", [*base, "-o", w / "run_dev", "--device", dev])
    add("train --data missing", ["train", "--config", cfg, "--data", w / "nope.h5", "-o", w / "run_d"])
    add("train --data text", ["train", "--config", cfg, "--data", w / "text.h5", "-o", w / "run_d"])
    add("train --data the simulation", ["train", "--config", cfg, "--data", sim, "-o", w / "run_d"])
    add("train --data bad units", ["train", "--config", cfg, "--data", w / "units_big.h5", "-o", w / "run_d"])
    add("train -o /proc/..", [*base, "-o", "/proc/probe_run"])
    add("train --seed -1", [*base, "-o", w / "run_seed", "--seed", -1])

    # simulate
    sbase = ["simulate", "--run", run, "--data", rec, "--max-spikes", 20]
    add("simulate --data x.h5 -o x.h5", [*sbase, "-o", rec], protect=[rec])
    add("simulate -o the checkpoint", [*sbase, "-o", run / "best.pt"], protect=[run])
    add("simulate -o a folder", [*sbase, "-o", w / "a_dir"], protect=[w / "a_dir"])
    add("simulate -o /proc/..", [*sbase, "-o", "/proc/probe.h5"])
    add("simulate -o /sys/..", [*sbase, "-o", "/sys/probe.h5"])
    add("simulate --nwb over the recording", [*sbase, "-o", w / "s1.h5", "--nwb", rec], protect=[rec])
    add("simulate --nwb the same as -o", [*sbase, "-o", w / "s2.h5", "--nwb", w / "s2.h5"])
    add("simulate --split bogus", [*sbase, "-o", w / "s3.h5", "--split", "bogus"])
    add("simulate --split train", [*sbase, "-o", w / "s_train.h5", "--split", "train", "--trials", 0], "ok")
    for opt, v in [("--repeats", 0), ("--batch", 0), ("--temperature", 0), ("--temperature", "nan"),
                   ("--top-k", -1), ("--top-p", 0), ("--top-p", "nan"), ("--top-p", 1.5), ("--max-spikes", 0),
                   ("--trials", ""), ("--trials", "a,b"), ("--trials", 999), ("--trials", -1), ("--seed", -1),
                   ("--device", "tpu9"), ("--device", "cuda")]:
        add(f"simulate {opt} {v!r}", [*sbase, "-o", w / "s4.h5", opt, v])
    add("simulate --run missing", ["simulate", "--run", w / "nope", "--data", rec, "-o", w / "s5.h5"])
    add("simulate --run a recording", ["simulate", "--run", rec, "--data", rec, "-o", w / "s5.h5"])
    add("simulate --data bad units", ["simulate", "--run", run, "--data", w / "units_big.h5", "-o", w / "s5.h5"])

    # evaluate
    ebase = ["evaluate", "--data", rec]
    add("evaluate --simulated s.h5 -o s.h5", [*ebase, "--simulated", sim, "-o", sim], protect=[sim])
    add("evaluate -o the recording", [*ebase, "--simulated", sim, "-o", rec], protect=[rec])
    add("evaluate -o a folder", [*ebase, "--simulated", sim, "-o", w / "a_dir"], protect=[w / "a_dir"])
    add("evaluate -o /proc/..", [*ebase, "--simulated", sim, "-o", "/proc/probe.json"])
    for v in [0, -0.05, "nan", "inf"]:
        add(f"evaluate --psth-bin {v}", [*ebase, "--simulated", sim, "-o", w / "e.json", "--psth-bin", v])
    for name in ["sim_nan", "sim_unit999", "sim_short"]:
        add(f"evaluate {name}", [*ebase, "--simulated", w / f"{name}.h5", "-o", w / "e.json"])
    add("evaluate --simulated a recording", [*ebase, "--simulated", rec, "-o", w / "e.json"])
    add("evaluate --data another recording", ["evaluate", "--data", w / "o_t2.h5", "--simulated", sim,
                                              "-o", w / "e.json"])
    add("evaluate --run missing", [*ebase, "--simulated", sim, "-o", w / "e.json", "--run", w / "nope"])
    add("evaluate --device tpu9", [*ebase, "--simulated", sim, "-o", w / "e.json", "--run", run,
                                   "--device", "tpu9"])
    add("evaluate -o a device", [*ebase, "--simulated", sim, "-o", w / "fakenull"], protect=[w / "fakenull"])
    add("evaluate valid", [*ebase, "--simulated", sim, "-o", w / "e_ok.json"], "ok")

    # connectivity
    cbase = ["connectivity", "--run", run, "--data", rec]
    for opt, v in [("--windows", 0), ("--windows", -5), ("--perturbation-windows", -1), ("--split", "bogus")]:
        add(f"connectivity {opt} {v}", [*cbase, "-o", w / "c.npz", opt, v])
    add("connectivity -o the recording", [*cbase, "-o", rec], protect=[rec])
    add("connectivity -o the checkpoint", [*cbase, "-o", run / "best.pt"], protect=[run])
    add("connectivity -o /proc/..", [*cbase, "-o", "/proc/probe.npz"])
    add("connectivity -o without a suffix", [*cbase, "-o", w / "c_nosuffix", "--windows", 2,
                                             "--perturbation-windows", 0], "ok")
    add("connectivity --device tpu9", [*cbase, "-o", w / "c.npz", "--device", "tpu9"])
    add("connectivity --data bad units", [*cbase[:3], "--data", w / "units_big.h5", "-o", w / "c.npz"])

    # decode
    dbase = ["decode", "--data", rec, "--target", "speed", "--mode", "baselines", "--baselines", "ridge",
             "--config", cfg]
    for opt, v in [("--bin", 0), ("--bin", -0.05), ("--bin", "nan"), ("--label-fraction", 0),
                   ("--label-fraction", -0.2), ("--label-fraction", "nan"), ("--label-fraction", 1.5),
                   ("--steps", 0), ("--steps", -1), ("--target", "nope"), ("--baselines", "bogus"),
                   ("--device", "tpu9")]:
        add(f"decode {opt} {v}", [*dbase, "-o", w / "d.json", opt, v])
    add("decode -o the recording", [*dbase, "-o", rec], protect=[rec])
    add("decode -o /proc/..", [*dbase, "-o", "/proc/probe.json"])
    add("decode --data the simulation", ["decode", "--data", sim, "--target", "speed", "--mode", "baselines",
                                         "-o", w / "d.json"])
    add("decode --mode finetune without --run", ["decode", "--data", rec, "--target", "speed", "--mode",
                                                 "finetune", "-o", w / "d.json"])
    add("decode --mode probe without --run", ["decode", "--data", rec, "--target", "speed", "--mode", "probe",
                                              "-o", w / "d.json"])
    add("decode joint on an empty validation split", ["decode", "--data", w / "empty_valid.h5", "--target", "speed",
                                                      "--config", cfg, "--steps", 2, "--baselines", "",
                                                      "-o", w / "d_ev.json"])

    # demo (a valid demo takes minutes: only refusals are probed)
    for opt, v in [("--max-steps", 0), ("--max-steps", -1), ("--repeats", 0)]:
        add(f"demo {opt} {v}", ["demo", "-o", w / "demo", opt, v])
    add("demo -o /proc/..", ["demo", "-o", "/proc/probe_demo"])
    add("demo -o a file", ["demo", "-o", rec], protect=[rec])
    return out


def classify(code, err, expect, intact, marker_made):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code is None:
        return "timeout"
    if "Traceback" in err or code not in (0, 2):
        return "traceback"
    if not intact or marker_made:
        return "silent acceptance"
    if code == 0:
        return "sane" if expect == "ok" else "silent acceptance"
    one_line_each = all(ln.startswith(("error: ", "neuroformer: error: ")) for ln in lines)
    return "clear error" if lines and one_line_each else "long error"


def extra_fixtures(w):
    """Fixtures made from the first ones: a device node, a wider config, a recording with no validation."""
    if not (w / "fakenull").exists():
        make_device(w / "fakenull")
    wide = json.loads(json.dumps(TINY_CONFIG))
    wide["model"]["width"] = 32
    (w / "cfg_wide.yaml").write_text(yaml.safe_dump(wide))
    tamper(w / "rec.h5", w / "empty_valid.h5", valid_domain__start=np.zeros(0), valid_domain__end=np.zeros(0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/neuroformer_probe"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "probe_inputs.json")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument("--commit", help="the code's commit, when the code is not a git checkout")
    args = parser.parse_args(argv)
    w = args.work.resolve()
    selected = [case for case in cases(w) if args.only in case[0]]
    if selected:                            # the fixtures take a minute: none for no case
        if not (w / "sim.h5").exists():
            make_fixtures(w)
        extra_fixtures(w)
    results = []
    for name, case_argv, expect, protect, marker in selected:
        before = [digest(p) for p in protect]
        backups = [backup(p, w / "backup" / str(i)) for i, p in enumerate(protect)]
        code, err, seconds = cli(*case_argv, timeout=30 if case_argv[0] == "demo" else TIMEOUT)
        intact = before == [digest(p) for p in protect]
        if not intact:                          # later cases need the input the code destroyed
            for p, copy in zip(protect, backups):
                restore(copy, p)
        made = marker is not None and Path(marker).exists()
        kind = classify(code, err, expect, intact, made)
        results.append({"case": name, "argv": [str(a) for a in case_argv], "expect": expect, "class": kind,
                        "exit": code, "seconds": round(seconds, 1), "stderr_tail": err.strip().splitlines()[-1:]})
        print(f"{kind:18} {name}", flush=True)
        if made:
            Path(marker).unlink()
    counts = {}
    for r in results:
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    write_result(args.out, {"cases": len(results), "counts": counts, "results": results}, vars(args), indent=1,
                 commit=args.commit)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
