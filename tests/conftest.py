"""Shared fixtures: a tiny synthetic recording and a hand-made recording with known spikes; the
check of a result file's provenance."""
import json
import os
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neuroformer.data.objects import Interval, RegularTimeSeries
from neuroformer.data.recording import make_recording, save_recording
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.provenance import FIELDS

if os.environ.get("PYTEST_XDIST_WORKER"):      # the test processes (pytest.ini: -n 2) share the cores:
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # one thread each, and in the CLI runs they start
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

NWB_A8604 = Path(__file__).resolve().parent / "data" / "pynapple_A8604" / "A8604-211122.nwb"  # real file, MIT

TINY = dict(n_neurons=30, trial_length=4.0, n_movies=2, n_trials=3, n_heldout_movies=1, heldout_trials=2, seed=3)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A ~40 s synthetic recording with 30 neurons (and its ground-truth file)."""
    return write_synthetic(tmp_path_factory.mktemp("syn") / "tiny.h5", SyntheticConfig(**TINY))[0]


def known_recording(**overrides):
    """3 units, spikes at known times, a 2-frame movie at 10 Hz shown at t=0, speed at 100 Hz."""
    parts = dict(
        spike_times=[0.1000, 0.1004, 0.1004, 0.1210, 0.1500, 0.1800, 0.2550],
        spike_units=[2, 1, 0, 2, 0, 1, 2],
        unit_ids=["s/a", "s/b", "s/c"],
        domain=(0.0, 1.0), session_id="s",
        movies=[("m", np.stack([np.full((4, 6), 10 * i, np.uint8) for i in range(10)]), 10.0)],
        presentations=dict(start=[0.0], movie_index=[0]),
        behavior=dict(running=RegularTimeSeries(speed=np.arange(100.0), sampling_rate=100.0, domain_start=0.0)),
        splits=dict(train=Interval(0.0, 0.6), valid=Interval(0.6, 0.8), test=Interval(0.8, 1.0)),
    )
    parts.update(overrides)
    return make_recording(**parts)


@pytest.fixture
def known_file(tmp_path):
    return save_recording(known_recording(), tmp_path / "known.h5")


def provenance_of(path):
    """The provenance a result file records: a JSON file's key, an HDF5 file's attribute or an .npz entry."""
    path = Path(path)
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["provenance"])
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return json.loads(str(arrays["provenance"]))
    return json.loads(path.read_text())["provenance"]


def check_provenance(path, seed, config=None, command=None):
    """Assert that `path` records every provenance field, `seed`, a config holding `config` (a
    Config, or a nested dict of expected values; None: no config) and the command line (default:
    this process's)."""
    record = provenance_of(path)
    assert set(record) == set(FIELDS), record.keys()
    assert record["seed"] == seed
    if hasattr(config, "to_dict"):
        config = json.loads(json.dumps(config.to_dict(), default=str))
    assert record["config"] is None if config is None else _holds(record["config"], config), record["config"]
    assert record["command"] == [str(c) for c in command or [Path(sys.argv[0]).name, *sys.argv[1:]]]
    assert record["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", record["commit"])
    assert record["torch"] and record["python"] and record["machine"] and record["version"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["date"])
    return record


def _holds(actual, expected):
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _holds(actual[k], v) for k, v in expected.items())
    return actual == expected
