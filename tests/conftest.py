"""Shared fixtures: a tiny synthetic recording and a hand-made recording with known spikes."""
from pathlib import Path

import numpy as np
import pytest

from neuroformer.data.objects import Interval, RegularTimeSeries
from neuroformer.data.recording import make_recording, save_recording
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic

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
