"""Malformed inputs: each gives one clear error naming the file, the field and the problem."""
import re

import h5py
import numpy as np
import pytest
import yaml

from neuroformer.cli import main
from neuroformer.data.importers import VideoSpec, prepare, write_video
from neuroformer.data.info import summarize
from neuroformer.data.recording import parse_split, save_recording
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.data.validate import validate_file
from neuroformer.errors import InputError

from conftest import known_recording

BIN = 0.01


def _npz(tmp_path, name="rec.npz", **arrays):
    base = dict(spikes=np.ones((3, 1000), np.int64))
    base.update(arrays)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def _nwb(tmp_path, spike_times, names=None):
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile(session_description="t", identifier="bad", session_start_time=datetime.now(timezone.utc))
    if names:
        nwb.add_unit_column(name="unit_name", description="name")
    for i, times in enumerate(spike_times):
        nwb.add_unit(spike_times=times, **({"unit_name": names[i]} if names else {}))
    path = tmp_path / "bad.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def _tamper(tmp_path, key, values):
    """A valid recording file with one dataset overwritten (as a broken writer would leave it)."""
    path = save_recording(known_recording(), tmp_path / "tampered.h5")
    with h5py.File(path, "r+") as f:
        del f[key]
        f[key] = values
    return path


CASES = {
    "unsorted spike times": (
        lambda p: validate_file(_tamper(p, "spikes/timestamps", np.array([0.1, 0.3, 0.2, 0.4, 0.5, 0.6, 0.7]))),
        "tampered.h5", "spikes.timestamps", r"not sorted: 1 decreasing steps, first at index 2"),
    "unit index out of range": (
        lambda p: validate_file(_tamper(p, "spikes/unit_index", np.array([0, 1, 2, 3, 0, 1, 7]))),
        "tampered.h5", "spikes.unit_index", r"2 values outside \[0, 3\)"),
    "NaN spike times in NWB": (
        lambda p: prepare(_nwb(p, [[0.1, np.nan, 0.5], [0.2]]), p / "o.h5"),
        "bad.nwb", "spikes.timestamps", r"1 NaN or infinite values"),
    "duplicate unit ids": (
        lambda p: prepare(_nwb(p, [[0.1], [0.2]], names=["u1", "u1"]), p / "o.h5"),
        "bad.nwb", "units.id", r"duplicate unit ids: \['bad/u1'\]"),
    "NWB without units": (
        lambda p: prepare(_nwb(p, []), p / "o.h5"),
        "bad.nwb", "units", r"no Units table"),
    "behaviour with the wrong length": (
        lambda p: prepare(_npz(p, speed=np.zeros(300)), p / "o.h5", bin_size=BIN, behavior=["speed=0.05"]),
        "rec.npz", "behavior.speed", r"wrong length: 300 samples at 20 Hz .* recording is \[0, 10\) s"),
    "behaviour sampled every NaN seconds": (
        lambda p: prepare(_npz(p, speed=np.zeros(200)), p / "o.h5", bin_size=BIN, behavior=["speed=nan"]),
        "data config", "modalities.behavior.variables.speed.dt", r"must be a positive number"),
    "one synthetic training trial": (
        lambda p: write_synthetic(p / "o.h5", SyntheticConfig(n_neurons=3, n_movies=1, n_trials=1)),
        "--trials", "trials", r"1 movie\(s\) x 1 trial\(s\): at least 2 trials"),
    "behaviour much shorter than the spikes": (
        lambda p: prepare(_npz(p, speed=np.zeros(20)), p / "o.h5", bin_size=BIN, behavior=["speed=0.05"]),
        "rec.npz", "behavior.speed", r"wrong length: 20 samples at 20 Hz from 0 s cover \[0, 1\) s"),
    "spike arrays of different lengths": (
        lambda p: validate_file(_tamper(p, "spikes/unit_index", np.array([0, 1, 2]))),
        "tampered.h5", "spikes.unit_index", r"3 values for 7 spikes.timestamps"),
    "info on a unit index of -1": (
        lambda p: summarize(_tamper(p, "spikes/unit_index", np.array([0, 1, 2, -1, 0, 1, 2]))),
        "tampered.h5", "spikes.unit_index", r"1 values outside \[0, 3\) \(e.g. -1\)"),
    "info with duplicate unit ids": (
        lambda p: summarize(_tamper(p, "units/id", np.array([b"s/a", b"s/a", b"s/c"]))),
        "tampered.h5", "units.id", r"duplicate unit ids: \['s/a'\]"),
    "behaviour with NaNs": (
        lambda p: prepare(_npz(p, speed=np.r_[np.zeros(198), np.nan, np.nan]), p / "o.h5", bin_size=BIN,
                          behavior=["speed=0.05"]),
        "rec.npz", "behavior.speed.speed", r"2 NaN or infinite values \(first at index 198\)"),
    "split outside the domain": (
        lambda p: prepare(_npz(p, train_intervals=np.array([[0.0, 5.0]]), test_intervals=np.array([[8.0, 12.0]])),
                          p / "o.h5", bin_size=BIN),
        "rec.npz", "test_domain", r"outside the recording domain \[0, 10\] s"),
    "overlapping splits": (
        lambda p: prepare(_npz(p, train_intervals=np.array([[0.0, 6.0]]), test_intervals=np.array([[5.0, 9.0]])),
                          p / "o.h5", bin_size=BIN),
        "rec.npz", "train_domain", r"overlaps test_domain by 0.4 s"),
    "unknown data-config key": (
        lambda p: prepare(_npz(p), p / "o.h5", config=_yaml(p, {"spikes": {"data": "spikes", "binsize": 0.01}})),
        "data.yaml", "spikes.binsize", r"unknown key"),
    "missing bin size": (
        lambda p: prepare(_npz(p), p / "o.h5"),
        "rec.npz", "spikes.dt", r"the bin size is required"),
    "spikes of the wrong shape": (
        lambda p: prepare(_npz(p, spikes=np.ones(100)), p / "o.h5", bin_size=BIN),
        "rec.npz", "spikes", r"expected binned counts \(n_neurons, n_timesteps\), got shape \(100,\)"),
    "negative counts": (
        lambda p: prepare(_npz(p, spikes=-np.ones((2, 10))), p / "o.h5", bin_size=BIN),
        "rec.npz", "spikes", r"counts must be non-negative integers"),
    "behaviour key missing from the file": (
        lambda p: prepare(_npz(p), p / "o.h5", bin_size=BIN, behavior=["speed=0.05"]),
        "rec.npz", "modalities.behavior.variables.speed", r"key 'speed' not in the file"),
    "frames of the wrong shape": (
        lambda p: prepare(_npz(p, frames=np.zeros((5, 4))), p / "o.h5", bin_size=BIN, frame_rate=20),
        "rec.npz", "frames", r"expected \(frames, height, width\[, 3\]\), got shape \(5, 4\)"),
    "missing video": (
        lambda p: prepare(_npz(p), p / "o.h5", bin_size=BIN, video=VideoSpec(str(p / "nope.mp4"))),
        "nope.mp4", "video", r"file does not exist"),
    "a video starting after the recording": (
        lambda p: prepare(_npz(p), p / "o.h5", bin_size=BIN,
                          video=VideoSpec(str(write_video(p / "v.avi", np.zeros((4, 8, 8), np.uint8), 10.0)),
                                          start=1e6)),
        "v.avi", "video-start", r"1e\+06 s is not before the recording's end \(10 s\)"),
    "a video that is not a video": (
        lambda p: prepare(_npz(p), p / "o.h5", bin_size=BIN, video=VideoSpec(_text(p / "fake.mp4"))),
        "fake.mp4", "video", r"OpenCV cannot open this file as a video"),
    "unsupported file type": (
        lambda p: prepare(_text(p / "rec.csv"), p / "o.h5", bin_size=BIN),
        "rec.csv", "file", r"unsupported extension '.csv'"),
    "not an HDF5 recording": (
        lambda p: summarize(_text(p / "x.h5")),
        "x.h5", "file", r"not a readable HDF5 file"),
    "bad split fractions": (
        lambda p: parse_split("0.7,0.2"),
        "--split", "split", r"three positive fractions summing to 1"),
    "bad --behavior shorthand": (
        lambda p: prepare(_npz(p), p / "o.h5", bin_size=BIN, behavior=["speed"]),
        "data config", "--behavior", r"expected NAME=DT"),
}


def _yaml(tmp_path, content):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def _text(path):
    path.write_text("not what it claims to be")
    return str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_names_file_field_and_problem(tmp_path, case):
    call, file_part, field, problem = CASES[case]
    with pytest.raises(InputError) as info:
        call(tmp_path)
    message = str(info.value)
    line = next((ln for ln in message.splitlines() if f": {field}: " in ln), None)
    assert line is not None, message
    path_part, _, rest = line.partition(f": {field}: ")
    assert path_part.endswith(file_part), message
    assert re.search(problem, rest), message
    assert not (tmp_path / "o.h5").exists()                     # nothing half-written


def test_every_problem_is_reported_at_once(tmp_path):
    path = _tamper(tmp_path, "spikes/timestamps", np.array([0.1, np.nan, 0.2, 0.1, 0.5, 0.6, 7.0]))
    with h5py.File(path, "r+") as f:
        del f["units/id"]
        f["units/id"] = np.array([b"s/a", b"s/a", b"s/c"])
    with pytest.raises(InputError) as info:
        validate_file(path)
    fields = [field for field, _ in info.value.problems]
    assert "spikes.timestamps" in fields and "units.id" in fields


def test_cli_prints_the_error_without_a_traceback(tmp_path, capsys):
    assert main(["prepare", str(_npz(tmp_path)), "-o", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'rec.npz'}: spikes.dt: the bin size is required") and "Traceback" not in err
