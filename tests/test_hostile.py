"""Hostile input at the command line: one error line naming the option or field, exit status 2,
no traceback, no code run from a data file, no input overwritten.

The usage errors run `neuroformer` in a new process each (a few hundredths of a second: nothing
heavy is imported before argparse is done); the cases that get past argparse import torch, ~3 s
a process, so they run `main` in this one (`cli`)."""
import os
import pickle
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import yaml

from neuroformer.cli import main
from neuroformer.config import config_from_dict, load_config
from neuroformer.data.recording import parse_split
from neuroformer.data.synthetic import SyntheticConfig, generate
from neuroformer.errors import InputError
from neuroformer.io import atomic_path, check_output
from neuroformer.rollouts import SimulationOptions, simulate
from neuroformer.training import RunOptions, _check_run_folder, train

from test_errors import _tamper
from test_model import TINY_CFG


def run_cli(*args):
    """`neuroformer ARGS` in a new process: (exit status, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "neuroformer.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stderr


@pytest.fixture
def cli(capfd):
    """`neuroformer ARGS` in this process: (exit status, stderr). stderr is captured at the file
    descriptors, all a terminal would show; an exception escaping `main` fails the test, as the
    traceback it would print does."""
    def run(*args):
        capfd.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit:
            code = exit.code
        return code, capfd.readouterr().err
    return run


def assert_one_line_error(result, *words):
    """`result` (exit status, stderr) is exit 2 with one line of stderr holding `words`, no traceback."""
    code, err = result
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    return err


SYN = ["prepare", "--synthetic", "--neurons", "4", "-o", "x.h5"]
NUMBERS = [
    (SYN + ["--trials", "0"], "--trials", "must be a positive integer, got '0'"),
    (SYN + ["--sessions", "0"], "--sessions", "positive integer"),
    (SYN + ["--movies", "0"], "--movies", "positive integer"),
    (SYN + ["--neurons", "-5"], "--neurons", "positive integer"),
    (SYN + ["--duration", "-10"], "--duration", "positive number"),
    (SYN + ["--trial-length", "nan"], "--trial-length", "positive number"),
    (SYN + ["--seed", "-1"], "--seed", "integer >= 0"),
    (["prepare", "a.npz", "-o", "x.h5", "--bin-size", "nan"], "--bin-size", "positive number"),
    (["prepare", "a.npz", "-o", "x.h5", "--frame-rate", "0"], "--frame-rate", "positive number"),
    (["prepare", "a.npz", "-o", "x.h5", "--video-fps", "0"], "--video-fps", "positive number"),
    (["prepare", "a.npz", "-o", "x.h5", "--video-start", "nan"], "--video-start", "finite number"),
    (["train", "--config", "c", "--data", "d", "-o", "r", "--max-steps", "0"], "--max-steps", "positive integer"),
    (["train", "--config", "c", "--data", "d", "-o", "r", "--max-steps", "-3"], "--max-steps", "positive integer"),
    (["train", "--config", "c", "--data", "d", "-o", "r", "--device", "tpu9"], "--device", "cpu, cuda or cuda:N"),
    (["simulate", "--run", "r", "--data", "d", "-o", "s", "--top-p", "1.5"], "--top-p", "fraction in (0, 1]"),
    (["simulate", "--run", "r", "--data", "d", "-o", "s", "--repeats", "0"], "--repeats", "positive integer"),
    (["evaluate", "--data", "d", "--simulated", "s", "-o", "e", "--psth-bin", "-0.05"], "--psth-bin", "positive"),
    (["connectivity", "--run", "r", "--data", "d", "-o", "c", "--windows", "0"], "--windows", "positive integer"),
    (["connectivity", "--run", "r", "--data", "d", "-o", "c", "--perturbation-windows", "-1"],
     "--perturbation-windows", "integer >= 0"),
    (["decode", "--data", "d", "--target", "t", "-o", "e", "--bin", "0"], "--bin", "positive number"),
    (["decode", "--data", "d", "--target", "t", "-o", "e", "--label-fraction", "1.5"], "--label-fraction", "(0, 1]"),
    (["decode", "--data", "d", "--target", "t", "-o", "e", "--label-fraction", "nan"], "--label-fraction", "(0, 1]"),
    (["decode", "--data", "d", "--target", "t", "-o", "e", "--steps", "0"], "--steps", "positive integer"),
    (["demo", "--repeats", "0"], "--repeats", "positive integer"),
]


@pytest.mark.parametrize("args,option,problem", NUMBERS, ids=[f"{a[0]} {o} {a[-1]}" for a, o, _ in NUMBERS])
def test_numbers_out_of_range_are_one_line_usage_errors(args, option, problem):
    err = assert_one_line_error(run_cli(*args), option, problem)
    assert err.startswith(f"neuroformer: error: {option}")


def test_cuda_without_a_gpu_is_refused(cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line_error(cli("train", "--config", "c", "--data", "d", "-o", "r", "--device", "cuda"),
                          "--device", "not available on this machine")


def test_pickle_is_refused_without_allow_pickle_and_its_code_never_runs(tmp_path, cli):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    assert_one_line_error(cli("prepare", tmp_path / "evil.pkl", "-o", tmp_path / "o.h5", "--bin-size", "0.01"),
                          "evil.pkl: file: a pickle can run any code", "--allow-pickle")
    assert not marker.exists() and not (tmp_path / "o.h5").exists()


def test_outputs_that_are_inputs_are_refused_before_any_work(tmp_path, known_file, cli):
    npz = tmp_path / "a.npz"
    np.savez(npz, spikes=np.ones((2, 100), np.int64))
    before = npz.read_bytes(), known_file.read_bytes()
    assert_one_line_error(cli("prepare", npz, "-o", npz, "--bin-size", "0.01"), "a.npz: -o: is also the input SOURCE")
    assert_one_line_error(cli("simulate", "--run", tmp_path / "no-run", "--data", known_file, "-o", known_file),
                          "known.h5: -o: is also the input --data")
    assert_one_line_error(cli("evaluate", "--data", tmp_path / "d.h5", "--simulated", known_file, "-o", known_file),
                          "-o: is also the input --simulated")
    assert_one_line_error(cli("simulate", "--run", tmp_path, "--data", known_file, "-o", tmp_path / "best.pt"),
                          "best.pt: -o: is also the input --run")
    assert_one_line_error(cli("simulate", "--run", tmp_path, "--data", known_file, "-o", tmp_path / "s.h5",
                              "--nwb", tmp_path / "s.h5"), "--nwb: is also the input -o")
    assert (npz.read_bytes(), known_file.read_bytes()) == before


def test_devices_folders_and_unwritable_places_are_refused(tmp_path, cli):
    special = tmp_path / "null"
    os.mknod(special, 0o666 | 0o020000, os.makedev(1, 3)) if os.geteuid() == 0 else os.mkfifo(special)
    syn = ["prepare", "--synthetic", "--neurons", "4", "--trials", "3", "--trial-length", "1"]
    assert_one_line_error(cli(*syn, "-o", special), "-o: is a device or special file")
    assert special.is_char_device() or special.is_fifo()
    assert_one_line_error(cli(*syn, "-o", tmp_path), "-o: is a folder: give a file name")
    assert_one_line_error(cli(*syn, "-o", "/proc/nf.h5"), "/proc/nf.h5: -o: cannot write in /proc")
    assert_one_line_error(cli("train", "--config", "c", "--data", "d", "-o", special), "-o: exists and is not a folder")


def test_check_output_allows_new_and_existing_regular_files(tmp_path):
    check_output(tmp_path / "new" / "deeper" / "x.h5", [("--data", tmp_path / "d.h5")])
    (tmp_path / "old.json").write_text("{}")
    check_output(tmp_path / "old.json", [("--data", tmp_path / "d.h5")])
    with pytest.raises(InputError, match="--data"):
        check_output(tmp_path / "sub" / ".." / "old.json", [("--data", tmp_path / "old.json")])


def test_an_existing_run_is_kept_unless_resumed_or_overwritten(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt", "metrics.jsonl", "notes.txt"):
        (run / name).write_text("x")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY_CFG))
    assert_one_line_error(cli("train", "--config", tmp_path / "c.yaml", "--data", "d", "-o", run),
                          "run: -o: holds a run already: pass --resume to continue it or --overwrite to replace it")
    assert (run / "last.pt").read_text() == "x"
    (run / ".last.pt.tmp123.pt").write_bytes(b"")              # a checkpoint write killed midway
    _check_run_folder(run, RunOptions(run, resume=True))
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl", "notes.txt"]
    _check_run_folder(run, RunOptions(run, overwrite=True))
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


def test_a_failed_atomic_write_leaves_no_temporary(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


CONFIG_RANGES = [
    ({"model": {"width": 0}}, "model.width", "must be >= 4, got 0"),
    ({"model": {"width": -16}}, "model.width", "must be >= 4"),
    ({"model": {"heads": 0}}, "model.heads", "must be >= 1"),
    ({"train": {"batch_size": 0}}, "train.batch_size", "must be >= 1"),
    ({"model": {"dropout": 1.5}}, "model.dropout", "must be in [0, 1), got 1.5"),
    ({"window": {"dt_res": 0.0}}, "window.dt_res", "must be > 0"),
    ({"window": {"dt_res": 0.1}}, "window.dt_res", "must be at most window.current (0.05), got 0.1"),
    ({"window": {"history": -1.0}}, "window.history", "must be >= 0"),
    ({"train": {"lr": float("nan")}}, "train.lr", "must be a finite number, got nan"),
    ({"loss": {"spikes": float("inf")}}, "loss.spikes", "must be a finite number"),
    ({"train": {"eval_every": 0}}, "train.eval_every", "must be >= 1"),
    ({"model": {"backbone": {"patch": 0}}}, "model.backbone.patch", "must be >= 1"),
]


@pytest.mark.parametrize("raw,field,problem", CONFIG_RANGES, ids=[c[1] for c in CONFIG_RANGES])
def test_config_values_out_of_range_name_the_key(raw, field, problem):
    with pytest.raises(InputError) as info:
        config_from_dict(raw, "c.yaml")
    assert str(info.value).startswith(f"c.yaml: {field}: {problem}")


def test_a_binary_file_as_yaml_is_an_input_error(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"cfg.yaml: config: cannot read YAML"):
        load_config(path)


def test_split_fractions_must_be_finite_and_positive():
    for text in ("nan,0.5,0.5", "1,0,0", "inf,0,0"):
        with pytest.raises(InputError, match="three positive fractions"):
            parse_split(text)


def test_two_trials_per_movie_still_give_every_split_a_trial():
    (data, _), = generate(SyntheticConfig(n_neurons=4, trial_length=1.0, n_movies=2, n_trials=2,
                                          n_heldout_movies=1, heldout_trials=1, seed=1))
    assert all(len(getattr(data, f"{s}_domain")) >= 1 for s in ("train", "valid", "test"))


def test_training_refuses_an_empty_validation_split(tmp_path, known_file):
    empty = _tamper(tmp_path, "valid_domain/start", np.zeros(0))
    with h5py.File(empty, "r+") as f:
        del f["valid_domain/end"]
        f["valid_domain/end"] = np.zeros(0)
    cfg = config_from_dict({**TINY_CFG, "window": {**TINY_CFG["window"], "frames": 0.0},
                            "modalities": {"behavior": {"variables": {"running.speed": {"predict": False}}}}})
    with pytest.raises(InputError, match=r"valid_domain: holds no 0.1 s window: validation chooses best.pt"):
        train(cfg, [empty], RunOptions(tmp_path / "run", max_steps=1))
    assert not (tmp_path / "run" / "best.pt").exists()


def test_simulate_refuses_an_unknown_split_before_loading(tmp_path, known_file):
    with pytest.raises(InputError, match=r"--split: split: unknown split 'bogus'"):
        simulate(tmp_path / "no-run", known_file, SimulationOptions(split="bogus"))


@pytest.mark.parametrize("key,values,problem", [
    ("spikes/timestamps", np.array([np.nan, 0.2, 0.3]), r"spikes.timestamps: 1 NaN or infinite values"),
    ("spikes/unit_index", np.array([0, 999, 1]), r"spikes.unit_index: 1 values outside \[0, 2\) \(e.g. 999\)"),
    ("spikes/trial", np.array([0, 0]), r"spikes.trial: 2 values for 3 spikes.timestamps"),
])
def test_evaluate_refuses_a_broken_simulation_file(tmp_path, known_file, key, values, problem, cli):
    sim = tmp_path / "sim.h5"
    with h5py.File(sim, "w") as f:
        f.attrs.update(format="neuroformer-simulation", format_version=1, repeats=1)
        for name, v in {"timestamps": [0.1, 0.2, 0.3], "unit_index": [0, 1, 1], "trial": [0, 0, 0],
                        "repeat": [0, 0, 0]}.items():
            f[f"spikes/{name}"] = np.asarray(v)
        f["units/id"] = np.array([b"s/a", b"s/b"])
        for name in ("index", "start", "end", "stimulus_id"):
            f[f"trials/{name}"] = np.zeros(1)
        del f[key]
        f[key] = values
    err = assert_one_line_error(cli("evaluate", "--data", known_file, "--simulated", sim, "-o", tmp_path / "e.json"))
    assert re.search(problem, err), err


def test_an_error_message_from_a_library_stays_on_one_line():
    err = InputError("run.pt", ("checkpoint", "cannot be read (UnpicklingError:\n  Weights only load failed.\n)"))
    assert str(err) == "run.pt: checkpoint: cannot be read (UnpicklingError: Weights only load failed. )"
