"""Calcium traces and events: the forward model against a direct sum, deconvolution finding
known spikes, events that add up to the activity, the synthetic calcium recording's ground
truth, and the prepare options' refusals."""
import json

import numpy as np
import pytest

from neuroformer.cli import main
from neuroformer.data.calcium import (CalciumModel, calcium_from_spikes, deconvolve, traces_from_events,
                                      traces_from_spikes, with_events)
from neuroformer.data.objects import ArrayDict
from neuroformer.data.imaging import binned_traces, calcium_series, imaging_parts
from neuroformer.data.recording import assign_splits, make_recording, open_recording
from neuroformer.decoders import BinnedSplit
from neuroformer.decoding import Samples
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.errors import InputError
from tests.conftest import TINY, known_recording


def test_calcium_is_the_sum_of_decaying_spikes_read_at_each_frames_end():
    model = CalciumModel(rate=10.0, tau=0.5)
    times, units = np.array([0.03, 0.26, 0.27, 0.5]), np.array([0, 1, 1, 0])
    c = calcium_from_spikes(times, units, 2, 12, model, start=0.0)
    ends = (np.arange(12) + 1) / model.rate
    for u in (0, 1):
        expected = [sum(np.exp(-(e - t) / model.tau) for t in times[units == u] if t < e) for e in ends]
        np.testing.assert_allclose(c[:, u], expected, rtol=1e-12)


def test_traces_saturate_and_carry_shot_noise_of_the_photon_count():
    model = CalciumModel(amplitude=0.2, kd=2.0, photons=1e4)
    silent = traces_from_spikes([], [], 1, 20000, model, np.random.default_rng(0))
    assert abs(silent.std() - 1 / np.sqrt(model.photons)) < 2e-4 and abs(silent.mean()) < 1e-4
    burst = np.full(50, 1.0)                                  # 50 spikes at once: c = 50 >> kd
    clean = traces_from_spikes(burst, np.zeros(50, int), 1, 40, CalciumModel(amplitude=0.2, kd=2.0, photons=1e12),
                               np.random.default_rng(0))
    c = calcium_from_spikes(burst, np.zeros(50, int), 1, 40, model)[:, 0]
    np.testing.assert_allclose(clean[:, 0], 0.2 * c / (1 + c / 2.0), atol=1e-5)
    assert clean.max() < 0.2 * 2.0                            # bounded by amplitude x kd


def test_deconvolution_finds_isolated_spikes_in_a_clean_trace():
    model = CalciumModel(photons=1e6)
    spikes = np.arange(20) * 4.013 + 1.01
    traces = traces_from_spikes(spikes, np.zeros(20, int), 1, 2500, model, np.random.default_rng(1))
    activity, _, fits = deconvolve(traces)
    assert abs(fits["decay"][0] - np.exp(-1 / (model.rate * model.tau))) < 0.005
    amplitude = activity.sum() / 20                           # one spike's share of the activity
    _, events, _ = deconvolve(traces, amplitude)
    np.testing.assert_array_equal(np.flatnonzero(events[:, 0]), np.floor(spikes * model.rate).astype(int))
    assert events.sum() == 20
    passed = np.cumsum(events[:, 0])                          # the events add up to the activity
    assert np.abs(passed - np.cumsum(activity[:, 0]) / amplitude).max() <= 0.5 + 1e-9


def test_synthetic_calcium_keeps_the_spikes_as_truth(tmp_path):
    cfg = SyntheticConfig(**TINY)
    plain = open_recording(write_synthetic(tmp_path / "plain.h5", cfg)[0])
    path = write_synthetic(tmp_path / "ca.h5", cfg, CalciumModel(), spike_amplitude=0.07)[0]
    data, truth = open_recording(path), np.load(tmp_path / "ca.truth.npz")
    np.testing.assert_array_equal(truth["spike_times"], plain.spikes.timestamps[:])
    np.testing.assert_array_equal(truth["spike_units"], plain.spikes.unit_index[:])
    duration = float(data.domain.end[-1] - data.domain.start[0])
    assert data.calcium.dff.shape == (int(duration * 30), TINY["n_neurons"])
    events = np.asarray(data.spikes.timestamps)
    assert 0.5 < len(events) / len(truth["spike_times"]) < 2.0
    assert np.asarray(data.deconvolution.spike_amplitude).tolist() == [0.07] * TINY["n_neurons"]
    frames = np.floor(events * 30).astype(int)                # events sit inside frames with activity
    assert (np.abs(events * 30 - frames - 0.5) <= 0.49 + 1e-9).all()


def _traces_only(n_frames=900, constant=False, start=0.0):
    """A recording of two ROIs' traces beginning `start` s after the recording does."""
    model, rng = CalciumModel(photons=1e4), np.random.default_rng(2)
    times = np.sort(rng.uniform(0, n_frames / 30, 40))
    traces = traces_from_spikes(times, np.arange(40) % 2, 2, n_frames, model, rng)
    if constant:
        traces[:, 1] = 0.5
    parts = imaging_parts(traces, 30.0, ["a", "b"], "s")
    return make_recording(**parts | {"calcium": calcium_series(traces, 30.0, start),
                                     "domain": (0.0, start + n_frames / 30.0)})


@pytest.mark.parametrize("data, amplitude, problem", [
    (known_recording(), 0.07, "k.h5: calcium: no calcium traces"),
    (known_recording(calcium=calcium_series(np.random.default_rng(0).normal(size=(1000, 3)), 30.0)), 0.07,
     "k.h5: spikes: the recording has 7 spikes already"),
    (_traces_only(constant=True), 0.07, r"k.h5: calcium.dff: 1 ROI\(s\) without variance"),
    (_traces_only(50), 0.07, "k.h5: calcium.dff: 50 frames: deconvolution needs at least 100"),
    (_traces_only(), 1e-9, "--spike-amplitude: spike amplitude: 1e-09 ΔF/F puts up to"),
    (_traces_only(), 1e6, "--spike-amplitude: spike amplitude: 1e.06 ΔF/F gives no event"),
    (_traces_only(), float("nan"), "must be a positive ΔF/F"),
])
def test_events_refusals(data, amplitude, problem):
    with pytest.raises(InputError, match=problem):
        with_events(data, amplitude, source="k.h5")


def test_events_are_deterministic_and_splits_lie_inside_the_traces():
    a = with_events(_traces_only(start=5.0), 0.07)
    assign_splits(a)
    assert a.train_domain.start[0] >= 5.0 and a.spikes.domain.start[0] == 5.0
    b = with_events(_traces_only(), 0.07)
    np.testing.assert_allclose(np.asarray(a.spikes.timestamps) - 5.0, np.asarray(b.spikes.timestamps), atol=1e-12)
    again = with_events(_traces_only(start=5.0), 0.07)
    np.testing.assert_array_equal(np.asarray(again.spikes.timestamps), np.asarray(a.spikes.timestamps))


@pytest.mark.parametrize("args, expected", [
    (["--synthetic", "--spike-amplitude", "0.1"], "applies to --events only"),
    (["--synthetic", "--events"], "--calcium makes it traces"),
    (["--circuit", "hub", "--events"], "a circuit has spikes"),
    (["--calcium", "--circuit", "hub"], "needs --synthetic"),
    (["--synthetic", "--calcium", "--circuit", "hub"], "a circuit has spikes"),
    (["--synthetic", "--calcium", "--events", "--spike-amplitude", "nan"], "--spike-amplitude"),
    (["--synthetic", "--calcium", "--events", "--spike-amplitude", "-1"], "--spike-amplitude"),
])
def test_prepare_calcium_options_refusals(args, expected, tmp_path, capsys):
    try:
        code = main(["prepare", *args, "-o", str(tmp_path / "x.h5")])
    except SystemExit as exit_:                               # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.h5").exists()


def test_imported_traces_become_events(tmp_path):
    model = CalciumModel(photons=1e5)
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0, 60, 120))
    units = rng.integers(0, 3, 120)
    traces = traces_from_spikes(times, units, 3, 1800, model, rng)
    np.savez(tmp_path / "arrays.npz", traces=traces.T)
    out = tmp_path / "ev.h5"
    assert main(["prepare", str(tmp_path / "arrays.npz"), "--imaging-rate", "30", "--events",
                 "--spike-amplitude", "0.15", "-o", str(out)]) == 0
    data = open_recording(out)
    got = np.asarray(data.spikes.unit_index)
    assert abs(len(got) - 120) <= 20
    assert [int((got == u).sum()) > 0.7 * int((units == u).sum()) for u in range(3)] == [True] * 3
    assert main(["info", str(out)]) == 0


def test_binned_traces_average_the_frames_of_each_bin(tmp_path):
    cfg = SyntheticConfig(**TINY)
    data = open_recording(write_synthetic(tmp_path / "ca.h5", cfg, CalciumModel(), spike_amplitude=0.07)[0])
    dff, t = np.asarray(data.calcium.dff, dtype=float), np.arange(len(data.calcium.dff)) / 30.0
    wide = binned_traces(data, 1.0, 2.0, 0.1)                 # 3 frames a bin
    for k in range(10):
        inside = (t >= 1.0 + 0.1 * k - 1e-9) & (t < 1.1 + 0.1 * k - 1e-9)
        np.testing.assert_allclose(wide[k], dff[inside].mean(0), rtol=1e-6)
    narrow = binned_traces(data, 1.0, 1.2, 0.01)              # most bins hold no frame
    centres = 1.0 + (np.arange(20) + 0.5) * 0.01
    empty = [k for k in range(20) if not ((t >= 1.0 + 0.01 * k - 1e-9) & (t < 1.01 + 0.01 * k - 1e-9)).any()]
    shown = np.floor(centres[empty] * 30.0 + 1e-9).astype(int)   # the frame on screen at the bin's centre
    np.testing.assert_allclose(narrow[empty, 3], dff[shown, 3], rtol=1e-6)
    samples = Samples(times=np.array([1.05, 1.55]), values=np.zeros((2, 1)), interval=np.zeros(2, int),
                      starts=np.array([1.0]), ends=np.array([2.0]))
    split = BinnedSplit.of(data, samples, 0.1)                # the baselines read these, not the events
    assert split.kind == "calcium" and np.allclose(split.binned[0], wide)


def test_nwb_ophys_with_trials_and_a_class_series_is_decoded_without_a_config(tmp_path):
    """An imaging session as a lab would have it: ΔF/F of tuned ROIs, a trials table, running
    speed and the grating direction (a class label on each imaging frame); `prepare --events`
    then `decode` with the derived config scores Neuroformer (on the events, and with
    `--calcium-tokens` on the ΔF/F as tokens too) and ridge (on the ΔF/F) alike."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.behavior import BehavioralTimeSeries
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel, RoiResponseSeries

    rng, rate, seconds, n_rois = np.random.default_rng(5), 30.0, 90.0, 8
    frames = int(seconds * rate)
    direction = np.repeat(rng.integers(0, 4, int(seconds / 3)), int(3 * rate))[:frames]
    preferred = np.arange(n_rois) % 4
    t = np.arange(frames) / rate
    times, units = [], []
    for u in range(n_rois):                                   # 6 Hz at the preferred direction, 1 Hz else
        lam = np.where(direction == preferred[u], 6.0, 1.0) / rate
        k = np.repeat(np.arange(frames), rng.poisson(lam))
        times.append(t[k] + rng.uniform(0, 1 / rate, len(k)))
        units.append(np.full(len(k), u))
    dff = traces_from_spikes(np.concatenate(times), np.concatenate(units), n_rois, frames, CalciumModel(), rng)

    nwb = NWBFile(session_description="gratings", identifier="ca1",
                  session_start_time=datetime(2026, 1, 1, tzinfo=timezone.utc))
    plane = nwb.create_imaging_plane(name="plane", optical_channel=OpticalChannel(name="g", description="g",
                                                                                emission_lambda=520.0),
                                     imaging_rate=rate, description="V1", device=nwb.create_device(name="scope"),
                                     excitation_lambda=920.0, indicator="GCaMP6s", location="V1")
    rois = ImageSegmentation().create_plane_segmentation(name="rois", description="r", imaging_plane=plane)
    for _ in range(n_rois):
        rois.add_roi(image_mask=np.ones((4, 4)))
    ophys = nwb.create_processing_module(name="ophys", description="ophys")
    ophys.add(rois.parent)
    region = rois.create_roi_table_region(region=list(range(n_rois)), description="all")
    ophys.add(DfOverF(roi_response_series=RoiResponseSeries(name="dff", data=dff, rois=region, unit="1", rate=rate)))
    behaviour = BehavioralTimeSeries(name="task")
    behaviour.create_timeseries(name="direction", data=direction.astype(np.int64), unit="class", rate=rate)
    behaviour.create_timeseries(name="speed", data=np.abs(rng.normal(5, 2, frames)), unit="cm/s", rate=rate)
    nwb.create_processing_module(name="behavior", description="behaviour").add(behaviour)
    for start in np.arange(0.0, seconds, 3.0):
        nwb.add_trial(start_time=start, stop_time=start + 3.0)
    with NWBHDF5IO(str(tmp_path / "ca.nwb"), "w") as io:
        io.write(nwb)

    rec, out = tmp_path / "ca.h5", tmp_path / "decode.json"
    assert main(["prepare", str(tmp_path / "ca.nwb"), "--events", "-o", str(rec)]) == 0
    assert main(["decode", "--data", str(rec), "--target", "direction", "--baselines", "ridge",
                 "--steps", "3", "--calcium-tokens", "0.5", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["provenance"]["config"]["window"]["calcium"] == 0.5
    cells = report["results"]["direction.direction"]
    assert report["baseline_input"] == "calcium" and {"neuroformer", "ridge"} <= set(cells)
    assert all("test_balanced_accuracy" in c for c in cells.values())
    assert cells["ridge"]["test_accuracy"] > cells["ridge"]["majority_class_rate"] + 0.2


def test_events_become_traces_through_each_rois_fitted_indicator():
    fits = ArrayDict(decay=np.array([0.9, 0.5]), baseline=np.array([0.1, -0.05]), noise=np.zeros(2),
                     spike_amplitude=np.array([0.2, 0.07]))
    times, units = np.array([1.0 + 3.5 / 30, 1.0 + 3.7 / 30, 1.0 + 10.2 / 30]), np.array([0, 0, 1])
    traces = traces_from_events(times, units, fits, 30.0, 1.0, 20, np.random.default_rng(0))
    k = np.arange(20)
    np.testing.assert_allclose(traces[:, 0], 0.1 + np.where(k >= 3, 2 * 0.2 * 0.9 ** (k - 3), 0.0), atol=1e-6)
    np.testing.assert_allclose(traces[:, 1], -0.05 + np.where(k >= 10, 0.07 * 0.5 ** (k - 10), 0.0), atol=1e-6)


# ---------------------------------------------------------------- route b: calcium tokens

TOKENS_CFG = {
    "window": {"current": 0.05, "history": 0.05, "frames": 0.0, "behavior": 0.05, "calcium": 0.2},
    "modalities": {"behavior": {"variables": {"running.speed": {"predict": True}}}},
    "model": {"width": 16, "heads": 2, "history_layers": 1, "behavior_layers": 0, "decoder_layers": 1,
              "dropout": 0.0, "calcium_latents": 4},
}


@pytest.fixture(scope="module")
def tokens_batch(tmp_path_factory):
    from neuroformer.assembly import window_spec
    from neuroformer.config import config_from_dict
    from neuroformer.data.windows import LoaderOptions, make_loader

    path = write_synthetic(tmp_path_factory.mktemp("ca") / "ca.h5", SyntheticConfig(**TINY), CalciumModel(),
                           spike_amplitude=0.07)[0]
    cfg = config_from_dict(TOKENS_CFG)
    loader = make_loader([path], window_spec(cfg), LoaderOptions(batch_size=4, seed=0))
    return path, cfg, loader.dataset.vocab, next(iter(loader))


def test_calcium_tokens_are_every_rois_dff_at_each_frame_of_the_span(tokens_batch):
    path, cfg, vocab, batch = tokens_batch
    data = open_recording(path)
    dff, start = np.asarray(data.calcium.dff), float(data.calcium.domain.start[0])
    tokens, n_rois = batch["calcium"], dff.shape[1]
    for b in range(4):
        t0, n = float(batch["t0"][b]), int(tokens["mask"][b].sum())
        frame = np.rint((tokens["time"][b, :n].numpy() + t0 - start) * 30.0).astype(int)
        assert n == 6 * n_rois and (frame == np.repeat(frame[::n_rois], n_rois)).all()
        assert (np.diff(frame[::n_rois]) == 1).all()              # 0.2 s of consecutive 30 Hz frames
        end = t0 + cfg.window.current                              # the last frame begins before the window ends
        assert start + frame[-1] / 30.0 < end <= start + (frame[-1] + 1) / 30.0 + 1e-6
        np.testing.assert_array_equal(tokens["value"][b, :n].numpy(), dff[frame, np.tile(np.arange(n_rois), 6)])
        np.testing.assert_array_equal(tokens["unit"][b, :n].numpy(),
                                      np.tile(vocab.lookup(data.units.id.astype(str)), 6))


def test_calcium_tokens_reach_the_behaviour_heads_only_in_any_order(tokens_batch):
    import torch
    from neuroformer.model import Neuroformer

    _, cfg, vocab, batch = tokens_batch
    torch.manual_seed(0)
    model = Neuroformer(cfg, len(vocab)).eval()
    for p in model.parameters():                  # weights far from the tiny init, so every input counts
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.5)

    def outputs(b):
        context = model.context_parts(b)
        memory, _ = model.encode_context(b, context)
        x = model.decode(b["current"], memory)
        return model.behavior_outputs(b, x, memory, context[0])["running.speed"], model(b)["nll_sum"]

    speed, nll = outputs(batch)
    order = torch.randperm(batch["calcium"]["unit"].shape[1])
    shuffled = {**batch, "calcium": {k: v[:, order] for k, v in batch["calcium"].items()}}
    torch.testing.assert_close(outputs(shuffled)[0], speed, rtol=1e-5, atol=1e-6)
    other = {**batch, "calcium": {**batch["calcium"], "value": torch.randn(batch["calcium"]["value"].shape)}}
    moved, same_nll = outputs(other)
    assert (moved - speed).abs().max() > 1e-2 * speed.abs().max()     # the traces are read ...
    assert same_nll == nll                                     # ... by the behaviour heads, never the spike heads


@pytest.mark.parametrize("args, expected", [
    (["config", "--template", "decoding", "--calcium-tokens", "0.5"], "calcium: --calcium-tokens reads ΔF/F traces"),
    (["config", "--calcium-tokens", "nan"], "--calcium-tokens: must be a positive number"),
    (["decode", "--target", "speed", "--calcium-tokens", "0.5", "--config", "configs/decoding.yaml"],
     "--calcium-tokens: calcium tokens: set window.calcium in configs/decoding.yaml instead"),
    (["decode", "--target", "speed", "--calcium-tokens", "0.5", "--mode", "finetune", "--run", "."],
     "--calcium-tokens: calcium tokens: finetune keeps the pretrained run's config"),
])
def test_calcium_tokens_refusals(args, expected, tiny_synthetic, tmp_path, capsys):
    try:
        code = main([args[0], "--data", str(tiny_synthetic), *args[1:], "-o", str(tmp_path / "out.yaml")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_calcium_tokens_of_less_than_a_frame_or_longer_than_the_splits_are_refused(tokens_batch, tmp_path, capsys):
    path = tokens_batch[0]
    for span, expected in (("0.01", "calcium: window.calcium 0.01 s is shorter than one imaging frame"),
                           ("400", "window: no train or valid or test sample has a whole 400 s window")):
        code = main(["decode", "--data", str(path), "--target", "speed", "--mode", "baselines", "--baselines", "ridge",
                     "--calcium-tokens", span, "-o", str(tmp_path / "d.json")])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_calcium_tokens_need_traces_in_the_recording(tiny_synthetic):
    from neuroformer.assembly import window_spec
    from neuroformer.config import config_from_dict
    from neuroformer.data.windows import RecordingSet, WindowDataset

    with pytest.raises(InputError, match=r"tiny\.h5: calcium: calcium tokens were requested \(window.calcium 0.2 s\)"):
        WindowDataset(RecordingSet([tiny_synthetic]), window_spec(config_from_dict(TOKENS_CFG)))
