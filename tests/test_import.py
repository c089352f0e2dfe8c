"""Importers: the original array dictionary, NWB (real and made here), and video files."""
import pickle

import h5py
import numpy as np
import pytest
import yaml
from scipy.io import savemat

from neuroformer.cli import main
from neuroformer.data.importers import VideoSpec, prepare, read_video, write_video
from neuroformer.data.recording import counts_to_spikes
from neuroformer.data.info import summarize
from neuroformer.data.recording import open_recording

from conftest import NWB_A8604

BIN = 0.01


def _arrays(n_units=5, n_bins=3000, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(0.3, size=(n_units, n_bins)).astype(np.int64)
    counts[0, 10] = 7                                         # several spikes in one bin
    return dict(spikes=counts, speed=np.arange(n_bins // 5, dtype=float),
                frames=rng.integers(0, 255, size=(n_bins // 5, 8, 12), dtype=np.uint8))


def _rebin(path, n_units, n_bins):
    data = open_recording(path)
    t, u = np.asarray(data.spikes.timestamps), np.asarray(data.spikes.unit_index)
    data.file.close()
    out = np.zeros((n_units, n_bins), np.int64)
    np.add.at(out, (u, np.floor(t / BIN).astype(int)), 1)
    return out


@pytest.mark.parametrize("suffix", [".npz", ".pkl", ".mat"])
def test_array_round_trip_and_behaviour_times(tmp_path, suffix):
    arrays = _arrays()
    src = tmp_path / f"rec{suffix}"
    if suffix == ".npz":
        np.savez(src, **arrays)
    elif suffix == ".pkl":
        src.write_bytes(pickle.dumps(arrays))
    else:
        savemat(src, arrays)                                  # 1-D arrays become MATLAB row vectors
    out = tmp_path / "rec.h5"
    assert main(["prepare", str(src), "-o", str(out), "--bin-size", str(BIN), "--behavior", "speed=0.05",
                 "--frame-rate", "20", *(["--allow-pickle"] if suffix == ".pkl" else [])]) == 0
    assert np.array_equal(_rebin(out, 5, 3000), arrays["spikes"])
    data = open_recording(out)
    speed = data.behavior.speed
    assert speed.sampling_rate == 20.0
    # sample i (value i) lands at time i * 0.05
    window = speed.slice(1.0, 1.2, reset_origin=False)
    assert np.allclose(window.timestamps, [1.0, 1.05, 1.1, 1.15]) and np.allclose(window.speed, [20, 21, 22, 23])
    assert data.movies.__dict__["frames"].shape == (600, 8, 12) and data.stimulus.start[0] == 0.0
    assert data.domain.end[-1] == pytest.approx(30.0)
    data.file.close()


def test_counts_to_spikes_places_spikes_inside_their_bins():
    counts = np.array([[0, 3, 1], [2, 0, 0]])
    t, u = counts_to_spikes(counts, 0.05, seed=1)
    assert np.all(np.diff(t) >= 0) and len(t) == 6
    bins = np.floor(t / 0.05).astype(int)
    assert sorted(zip(u.tolist(), bins.tolist())) == [(0, 1), (0, 1), (0, 1), (0, 2), (1, 0), (1, 0)]
    frac = t / 0.05 - bins
    assert frac.min() >= 0.01 and frac.max() < 0.99
    t2, _ = counts_to_spikes(counts, 0.05, seed=1)
    assert np.array_equal(t, t2)


def test_data_config_yaml_with_the_original_keys_and_interval_splits(tmp_path):
    arrays = _arrays()
    n = 3000 * BIN
    starts = np.arange(0, n, 0.05)
    arrays.update(intervals=starts, train_intervals=starts[starts < 0.7 * n],
                  test_intervals=starts[starts >= 0.8 * n], finetune_intervals=starts[starts < 0.1 * n],
                  eye=np.random.default_rng(0).normal(size=(600, 2)))
    np.savez(tmp_path / "rec.npz", **arrays)
    cfg = {"session": "monkeyA", "spikes": {"data": "spikes", "dt": BIN}, "frames": {"data": "frames", "dt": 0.05},
           "modalities": {"behavior": {"variables": {
               "speed": {"data": "speed", "dt": 0.05, "predict": True, "objective": "regression"},
               "eye": {"data": "eye", "dt": 0.05}}}}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(cfg))
    out = prepare(tmp_path / "rec.npz", tmp_path / "rec.h5", config=tmp_path / "data.yaml")
    data = open_recording(out)
    assert data.units.id[0] == "monkeyA/0"
    assert set(data.behavior.keys()) == {"speed", "eye"} and set(data.behavior.eye.keys()) == {"eye_0", "eye_1"}
    assert data.test_domain.start[0] == pytest.approx(0.8 * n)
    train_s = float((data.train_domain.end - data.train_domain.start).sum())
    valid_s = float((data.valid_domain.end - data.valid_domain.start).sum())
    assert train_s == pytest.approx(0.9 * 0.7 * n) and valid_s == pytest.approx(0.1 * 0.7 * n)
    assert data.valid_domain.start[0] >= data.train_domain.end[-1] - 1e-9   # validation is the tail of training time
    assert data.finetune_domain.end[-1] == pytest.approx(0.1 * n)
    data.file.close()


def test_time_block_split_without_trials(tmp_path):
    np.savez(tmp_path / "rec.npz", spikes=_arrays()["spikes"])
    out = prepare(tmp_path / "rec.npz", tmp_path / "rec.h5", bin_size=BIN, split=(0.6, 0.2, 0.2))
    splits = summarize(out)["splits"]
    assert [splits[k]["intervals"] for k in ("train", "valid", "test")] == [1, 1, 1]
    assert [round(splits[k]["seconds"], 6) for k in ("train", "valid", "test")] == [18.0, 6.0, 6.0]


def test_real_nwb_file_imports_and_info_reports_it(tmp_path, capsys):
    out = tmp_path / "a8604.h5"
    assert main(["prepare", str(NWB_A8604), "-o", str(out)]) == 0
    s = summarize(out)
    assert s["units"] == 3 and sorted(s["spikes_per_unit"].values()) == sorted([11020, 4690, 5644])
    assert list(s["spikes_per_unit"].values()) == [11020, 4690, 5644]
    assert s["spike_span_s"][0] == pytest.approx(0.03, abs=0.005)
    assert s["spike_span_s"][1] == pytest.approx(1087.4, abs=0.05)
    assert s["domain_s"][1] == pytest.approx(1087.53, abs=0.01)      # the "wake" epoch
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "units     3" in text and "spikes    21354" in text and "11020" in text


def _nwb_with_everything(path, external=None):
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import EyeTracking, SpatialSeries
    from pynwb.image import ImageSeries

    nwb = NWBFile(session_description="test", identifier="sess1", session_start_time=datetime.now(timezone.utc))
    for i, times in enumerate([[0.5, 1.0, 2.5], [0.7, 3.0]]):
        nwb.add_unit(spike_times=times)
    beh = nwb.create_processing_module("behavior", "behaviour")
    beh.add(TimeSeries(name="running_speed", data=np.arange(40.0), unit="cm/s", rate=10.0, starting_time=0.0))
    eye = EyeTracking(name="EyeTracking")
    eye.add_spatial_series(SpatialSeries(name="eye_position", data=np.ones((40, 2)), reference_frame="screen",
                                         timestamps=np.arange(40) * 0.1))
    beh.add(eye)
    nwb.add_trial(start_time=0.0, stop_time=1.5)
    nwb.add_trial(start_time=2.0, stop_time=3.5)
    if external:
        movie = ImageSeries(name="movie", external_file=[external], format="external", starting_frame=[0], num_samples=30,
                            rate=10.0, starting_time=0.0, unit="n.a.")
    else:
        movie = ImageSeries(name="movie", data=np.zeros((30, 6, 8), np.uint8), rate=10.0, starting_time=0.0, unit="n.a.")
    nwb.add_stimulus(movie)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.mark.parametrize("external", [False, True])
def test_nwb_behaviour_trials_and_stimulus(tmp_path, external):
    video = None
    if external:
        frames = np.stack([np.full((6, 8), 8 * i, np.uint8) for i in range(30)])
        video = write_video(tmp_path / "movie.avi", frames, 10.0).name
    src = _nwb_with_everything(tmp_path / "s.nwb", external=video)
    out = prepare(src, tmp_path / "s.h5")
    data = open_recording(out)
    assert list(data.units.id) == ["sess1/0", "sess1/1"]
    assert np.allclose(data.spikes.timestamps, [0.5, 0.7, 1.0, 2.5, 3.0])
    assert set(data.behavior.keys()) == {"running_speed", "eye_position"}
    assert np.allclose(data.behavior.running_speed.slice(1.0, 1.25, reset_origin=False).running_speed, [10, 11, 12])
    assert len(data.trials) == 2 and len(data.train_domain) + len(data.valid_domain) + len(data.test_domain) == 2
    frames = data.movies.__dict__["frames"]
    assert frames.shape == (30, 6, 8) and data.movie_table.frame_rate[0] == 10.0
    if external:
        assert frames[7, 0, 0] == 56                          # FFV1 is lossless
    data.file.close()


def test_video_attached_once_and_shown_every_trial(tmp_path):
    frames = np.stack([np.full((8, 12), 10 * i, np.uint8) for i in range(20)])
    video = write_video(tmp_path / "m.avi", frames, 20.0)
    back, fps = read_video(video)
    assert np.array_equal(back, frames) and fps == 20.0
    src = _nwb_with_everything(tmp_path / "s.nwb")
    out = prepare(src, tmp_path / "s.h5", video=VideoSpec(str(video), per_trial=True))
    data = open_recording(out)
    assert data.movies.__dict__["frames"].shape == (20, 8, 12)       # stored once
    assert np.allclose(data.stimulus.start, [0.0, 2.0]) and list(data.trials.stimulus_id) == [0, 0]
    data.file.close()
    out2 = tmp_path / "s2.h5"
    assert main(["prepare", str(src), "-o", str(out2), "--video", str(video), "--video-fps", "10",
                 "--video-start", "0.5"]) == 0
    data = open_recording(out2)
    assert np.allclose([data.stimulus.start[0], data.stimulus.end[0]], [0.5, 2.5])
    data.file.close()


def _nwb_with_ephys(path):
    """Units, an ElectricalSeries in acquisition and LFP in processing["ecephys"] (brain
    recordings), a BehavioralTimeSeries in processing["behavior"] and a Position in acquisition."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.behavior import BehavioralTimeSeries, Position
    from pynwb.ecephys import LFP, ElectricalSeries

    nwb = NWBFile(session_description="test", identifier="ephys1", session_start_time=datetime.now(timezone.utc))
    nwb.add_unit(spike_times=[0.5, 1.0, 2.5])
    device = nwb.create_device(name="probe")
    group = nwb.create_electrode_group(name="shank", description="shank", location="V1", device=device)
    for _ in range(3):
        nwb.add_electrode(group=group, location="V1")
    electrodes = nwb.create_electrode_table_region(region=[0, 1, 2], description="all")
    nwb.add_acquisition(ElectricalSeries(name="raw", data=np.zeros((400, 3)), electrodes=electrodes, rate=100.0))
    lfp = ElectricalSeries(name="lfp", data=np.zeros((400, 3)), electrodes=electrodes, rate=100.0)
    nwb.create_processing_module("ecephys", "LFP").add(LFP(electrical_series=lfp))
    speed = BehavioralTimeSeries(name="BehavioralTimeSeries")
    speed.add_timeseries(TimeSeries(name="running_speed", data=np.arange(40.0), unit="cm/s", rate=10.0))
    nwb.create_processing_module("behavior", "behaviour").add(speed)
    position = Position(name="Position")
    position.create_spatial_series(name="xy", data=np.ones((40, 2)), reference_frame="arena", rate=10.0)
    nwb.add_acquisition(position)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def test_nwb_behaviour_never_reads_brain_recordings(tmp_path, monkeypatch):
    src = _nwb_with_ephys(tmp_path / "ephys.nwb")
    read = []
    original = h5py.Dataset.__getitem__

    def recording_read(dataset, key):
        read.append(dataset.name)
        return original(dataset, key)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording_read)
    out = prepare(src, tmp_path / "ephys.h5")
    monkeypatch.undo()
    assert any(name.endswith("/running_speed/data") for name in read)       # the behaviour was read, and
    assert not [name for name in read if name.endswith(("/raw/data", "/lfp/data"))]   # the voltages not
    data = open_recording(out)
    assert set(data.behavior.keys()) == {"running_speed", "xy"}
    assert np.allclose(data.behavior.running_speed.slice(1.0, 1.25, reset_origin=False).running_speed, [10, 11, 12])
    data.file.close()
