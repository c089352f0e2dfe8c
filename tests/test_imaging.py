"""Calcium imaging imports: NWB ophys, suite2p folders and array dictionaries round-trip their
traces, frame rates and ROI ids; malformed inputs are one-line errors."""
from datetime import datetime, timezone

import numpy as np
import pytest

from neuroformer.cli import main
from neuroformer.data.recording import open_recording

RATE = 30.0


def _fluorescence(rng, n_rois, n_frames):
    """Positive raw fluorescence with transients, and a dimmer neuropil."""
    events = rng.poisson(0.05, size=(n_rois, n_frames)).astype(float)
    kernel = np.exp(-np.arange(60) / 15.0)
    transients = np.stack([np.convolve(e, kernel)[:n_frames] for e in events])
    return 200 + 100 * transients + rng.normal(0, 5, (n_rois, n_frames)), 80 + rng.normal(0, 3, (n_rois, n_frames))


def _dff(f):
    f0 = np.percentile(f, 10, axis=0)
    return f / f0 - 1


def _stored(path):
    data = open_recording(path)
    try:
        return (np.asarray(data.calcium.dff), data.calcium.sampling_rate, float(data.calcium.domain.start[0]),
                list(data.units.id.astype(str)), len(data.spikes.timestamps))
    finally:
        data.file.close()


@pytest.fixture()
def suite2p_folder(tmp_path):
    rng = np.random.default_rng(0)
    f, fneu = _fluorescence(rng, 5, 900)
    folder = tmp_path / "mouse1" / "plane0"
    folder.mkdir(parents=True)
    np.save(folder / "F.npy", f.astype(np.float32))
    np.save(folder / "Fneu.npy", fneu.astype(np.float32))
    np.save(folder / "spks.npy", np.zeros_like(f, dtype=np.float32))
    np.save(folder / "iscell.npy", np.array([[1, 0.9], [0, 0.2], [1, 0.8], [1, 0.7], [0, 0.1]]))
    np.save(folder / "ops.npy", {"fs": 15.0}, allow_pickle=True)
    return folder


def test_suite2p_folder_round_trips_the_accepted_cells(suite2p_folder, tmp_path):
    out = tmp_path / "s2p.h5"
    assert main(["prepare", str(suite2p_folder), "--imaging-rate", str(RATE), "-o", str(out)]) == 0
    traces, rate, start, ids, n_spikes = _stored(out)
    f, fneu = np.load(suite2p_folder / "F.npy"), np.load(suite2p_folder / "Fneu.npy")
    keep = [0, 2, 3]
    np.testing.assert_allclose(traces, _dff(f[keep].T.astype(float) - 0.7 * fneu[keep].T), rtol=1e-5, atol=1e-6)
    assert (rate, start, n_spikes) == (RATE, 0.0, 0)
    assert ids == ["mouse1_plane0/roi0", "mouse1_plane0/roi2", "mouse1_plane0/roi3"]
    assert main(["info", str(out)]) == 0


def test_suite2p_rate_comes_from_ops_only_when_pickles_are_allowed(suite2p_folder, tmp_path, capsys):
    out = tmp_path / "s2p.h5"
    assert main(["prepare", str(suite2p_folder), "-o", str(out)]) == 2
    assert "give --imaging-rate HZ (ops.npy holds it, but it is a pickle" in capsys.readouterr().err
    assert main(["prepare", str(suite2p_folder), "--allow-pickle", "-o", str(out)]) == 0
    assert _stored(out)[1] == 15.0


def _nwb_ophys(path, data, rate=None, timestamps=None, kind="DfOverF", roi_ids=(10, 11, 12)):
    from pynwb import NWBFile, NWBHDF5IO
    from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries

    nwb = NWBFile(session_description="imaging", identifier="img1", session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    device = nwb.create_device(name="scope")
    plane = nwb.create_imaging_plane(name="plane", optical_channel=OpticalChannel(name="green", description="g",
                                                                                emission_lambda=520.0),
                                     imaging_rate=RATE, description="V1", device=device, excitation_lambda=920.0,
                                     indicator="GCaMP6s", location="V1")
    segmentation = ImageSegmentation()
    rois = segmentation.create_plane_segmentation(name="rois", description="r", imaging_plane=plane)
    for _ in roi_ids:
        rois.add_roi(image_mask=np.ones((4, 4)))
    rois.id.data[:] = list(roi_ids)
    module = nwb.create_processing_module(name="ophys", description="ophys")
    module.add(segmentation)
    region = rois.create_roi_table_region(region=list(range(len(roi_ids))), description="all")
    series = RoiResponseSeries(name="traces", data=data, rois=region, unit="a.u.",
                               **({"rate": rate} if rate else {"timestamps": timestamps}))
    module.add({"DfOverF": DfOverF, "Fluorescence": Fluorescence}[kind](roi_response_series=series))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def test_nwb_ophys_round_trips_traces_rate_and_roi_ids(tmp_path):
    rng = np.random.default_rng(1)
    dff = rng.normal(0, 0.2, (600, 3))
    src = _nwb_ophys(tmp_path / "img.nwb", dff, rate=RATE)
    out = tmp_path / "img.h5"
    assert main(["prepare", str(src), "-o", str(out)]) == 0
    traces, rate, start, ids, n_spikes = _stored(out)
    np.testing.assert_allclose(traces, dff.astype(np.float32))
    assert (rate, start, ids, n_spikes) == (RATE, 0.0, ["img1/10", "img1/11", "img1/12"], 0)


def test_nwb_fluorescence_with_timestamps_becomes_dff(tmp_path):
    f, _ = _fluorescence(np.random.default_rng(2), 3, 600)
    src = _nwb_ophys(tmp_path / "f.nwb", f.T, timestamps=5.0 + np.arange(600) / RATE, kind="Fluorescence")
    assert main(["prepare", str(src), "-o", str(tmp_path / "f.h5")]) == 0
    traces, rate, start, _, _ = _stored(tmp_path / "f.h5")
    np.testing.assert_allclose(traces, _dff(f.T), rtol=1e-5, atol=1e-6)
    assert rate == pytest.approx(RATE) and start == pytest.approx(5.0)


def test_array_dictionary_traces_round_trip(tmp_path):
    dff = np.random.default_rng(3).normal(0, 0.3, (4, 450))
    np.savez(tmp_path / "arrays.npz", traces=dff)
    out = tmp_path / "arr.h5"
    assert main(["prepare", str(tmp_path / "arrays.npz"), "--imaging-rate", "15", "-o", str(out)]) == 0
    traces, rate, _, ids, _ = _stored(out)
    np.testing.assert_allclose(traces, dff.T.astype(np.float32))
    assert rate == 15.0 and ids == [f"arrays/{i}" for i in range(4)]


def _bad_traces(tmp_path, key, value):
    dff = np.random.default_rng(4).normal(0, 0.3, (3, 300))
    dff[key] = value
    np.savez(tmp_path / "bad.npz", traces=dff)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("case, expected", [
    ("nan", "calcium: 2 NaN or infinite values"),
    ("constant", "calcium.dff: 1 ROI(s) without variance (a constant trace): ['bad/1']"),
    ("no_rate", "calcium.dt: the imaging frame interval is required"),
    ("missing_fneu", "suite2p: missing Fneu.npy"),
    ("shape", "Fneu: shape (5, 800) differs from F.npy's (5, 900)"),
    ("no_cells", "iscell: no ROI is classified as a cell"),
    ("dark", "F: 1 ROI(s) have a baseline fluorescence <= 0 after neuropil correction (columns [1])"),
    ("irregular", "ophys traces: irregular timestamps"),
    ("traces_only_train", "spikes: none to model: the recording holds calcium traces only"),
    ("complex", "calcium: expected real numbers (n_rois, n_frames), got dtype complex128"),
    ("no_frames", "calcium: expected a matrix (n_rois, n_frames), got shape (3, 0)"),
    ("overflow", "calcium: values beyond the float32 range"),
    ("tiny_rate", "imaging rate (1 / calcium.dt): must be a frame rate in [0.01, 10000] Hz"),
    ("bool_dt", "calcium.dt: must be a positive number (s), got True"),
    ("list_key", "calcium.data: expected the name of an array in the file, got ['traces']"),
    ("spikes_typo", "spikes: key 'spikse' not in the file"),
    ("folder_with_bin_size", "--bin-size: a suite2p folder takes --imaging-rate (or --allow-pickle) only"),
    ("rate_forgotten", "traces: calcium traces: give their frame rate (--imaging-rate HZ)"),
    ("lengths", "spikes: the counts span 30 s, the traces 10 s"),
    ("iscell_strings", "iscell: expected 5 rows of numbers (ROIs[, 2]), got <U3 (5, 2)"),
    ("zero_frames_f", "F: expected a matrix (ROIs, frames), got shape (5, 0)"),
    ("nwb_rate_nan", "ophys traces.rate: must be a frame rate in [0.01, 10000] Hz, got nan"),
    ("nwb_with_rate", "--imaging-rate: an NWB file states its own imaging rate"),
    ("output_is_input", "-o: is also the input SOURCE: writing it would destroy the input"),
])
def test_malformed_imaging_inputs_are_one_line_errors(case, expected, tmp_path, suite2p_folder, capsys):
    args = None
    if case == "nan":
        args = [str(_bad_traces(tmp_path, (0, slice(3, 5)), np.nan)), "--imaging-rate", "30"]
    elif case == "constant":
        args = [str(_bad_traces(tmp_path, 1, 0.5)), "--imaging-rate", "30"]
    elif case == "no_rate":
        args = [str(_bad_traces(tmp_path, 0, 0.0)), "--config", str(_yaml(tmp_path, "calcium: {data: traces}\n"))]
    elif case == "missing_fneu":
        (suite2p_folder / "Fneu.npy").unlink()
    elif case == "shape":
        np.save(suite2p_folder / "Fneu.npy", np.ones((5, 800)))
    elif case == "no_cells":
        np.save(suite2p_folder / "iscell.npy", np.zeros((5, 2)))
    elif case == "dark":
        f = np.load(suite2p_folder / "F.npy")
        f[2] = 10.0 + np.arange(900) % 7
        np.save(suite2p_folder / "F.npy", f)
    elif case == "irregular":
        stamps = np.cumsum(np.where(np.arange(300) == 150, 0.5, 1 / RATE))
        args = [str(_nwb_ophys(tmp_path / "irr.nwb", np.random.default_rng(5).normal(size=(300, 3)),
                               timestamps=stamps))]
    elif case in ("complex", "no_frames", "overflow", "lengths", "rate_forgotten", "list_key", "bool_dt", "tiny_rate"):
        traces = {"complex": np.ones((3, 300)) + 1j, "no_frames": np.ones((3, 0)), "overflow": np.full((3, 300), 1e300),
                  }.get(case, np.random.default_rng(7).normal(size=(3, 300)))
        extra = {"spikes": np.ones((3, 3000), dtype=int)} if case in ("lengths", "rate_forgotten") else {}
        np.savez(tmp_path / "t.npz", traces=traces, **extra)
        configs = {"list_key": "calcium: {data: [traces], dt: 0.05}\n", "bool_dt": "calcium: {data: traces, dt: true}\n"}
        args = [str(tmp_path / "t.npz"), *{"lengths": ["--imaging-rate", "30", "--bin-size", "0.01"], "rate_forgotten": [],
                                           "tiny_rate": ["--imaging-rate", "1e-300"]}.get(case, ["--imaging-rate", "30"])]
        if case in configs:
            args[1:] = ["--config", str(_yaml(tmp_path, configs[case]))]
        if case == "rate_forgotten":
            np.savez(tmp_path / "t.npz", traces=traces)
    elif case == "spikes_typo":
        np.savez(tmp_path / "t.npz", traces=np.random.default_rng(9).normal(size=(3, 300)), spikes=np.ones((3, 900), int))
        args = [str(tmp_path / "t.npz"), "--config", str(_yaml(tmp_path, "calcium: {dt: 0.0333}\nspikes: {data: spikse, dt: 0.01}\n"))]
    elif case == "folder_with_bin_size":
        args = [str(suite2p_folder), "--imaging-rate", "30", "--bin-size", "0.01"]
    elif case == "iscell_strings":
        np.save(suite2p_folder / "iscell.npy", np.array([["yes", "a"]] * 5))
    elif case == "zero_frames_f":
        np.save(suite2p_folder / "F.npy", np.ones((5, 0)))
    elif case in ("nwb_rate_nan", "nwb_with_rate"):
        src = _nwb_ophys(tmp_path / "n.nwb", np.random.default_rng(8).normal(size=(300, 3)),
                         rate=float("nan") if case == "nwb_rate_nan" else RATE)
        args = [str(src), *(["--imaging-rate", "30"] if case == "nwb_with_rate" else [])]
    elif case == "output_is_input":
        code = main(["prepare", str(suite2p_folder), "--imaging-rate", "30", "-o", str(suite2p_folder / "F.npy")])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and np.load(suite2p_folder / "F.npy").shape == (5, 900)
        return
    if case == "traces_only_train":
        rec = tmp_path / "arr.h5"
        np.savez(tmp_path / "arrays.npz", traces=np.random.default_rng(6).normal(0, 0.3, (4, 3000)))
        assert main(["prepare", str(tmp_path / "arrays.npz"), "--imaging-rate", "30", "-o", str(rec)]) == 0
        capsys.readouterr()
        code = main(["train", "--data", str(rec), "-o", str(tmp_path / "run")])
    else:
        code = main(["prepare", *(args or [str(suite2p_folder), "--imaging-rate", "30"]), "-o", str(tmp_path / "x.h5")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.h5").exists()


def _yaml(tmp_path, text):
    (tmp_path / "data.yaml").write_text(text)
    return tmp_path / "data.yaml"
