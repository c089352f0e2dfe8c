"""Eye-centred frames: the shift against scipy's, the loader's and the GLM's frames against a
direct computation from the stored frames and the recorded gaze, and the config's refusals."""
import numpy as np
import pytest
from scipy.ndimage import shift as scipy_shift

from neuroformer.config import config_from_dict
from neuroformer.data.gaze import Gaze, eye_centred
from neuroformer.data.objects import DatasetIndex
from neuroformer.data.recording import behavior_at, frame_on_screen, movie_frame_dataset, open_recording
from neuroformer.data.windows import RecordingSet, WindowDataset, WindowSpec
from neuroformer.errors import InputError
from neuroformer.glm import GLMConfig, StimulusPCs, _block_average

GAZE = Gaze("eye.phi", "eye.theta", 1.5)


def test_eye_centred_is_scipys_bilinear_shift_by_minus_the_gaze():
    rng = np.random.default_rng(0)
    frames = rng.random((3, 12, 20)).astype(np.float32)
    x, y = np.array([1.3, -2.6, 0.0]), np.array([0.4, 3.1, -1.7])
    out = eye_centred(frames, x, y)
    for f in range(3):
        expected = scipy_shift(frames[f], (-y[f], -x[f]), order=1, mode="grid-constant", cval=frames[f].mean())
        np.testing.assert_allclose(out[f], expected, atol=1e-5)
    assert eye_centred(frames[:1], [0.0], [0.0]).tolist() == frames[:1].tolist()


def test_loader_frames_are_shifted_by_the_gaze_at_their_onset(tiny_synthetic):
    spec = WindowSpec(current=0.05, history=0.05, frames=0.2, behavior=0.05)
    plain = WindowDataset(RecordingSet([tiny_synthetic]), spec)
    moved = WindowDataset(RecordingSet([tiny_synthetic]), WindowSpec(**{**spec.__dict__, "gaze": GAZE}))
    data = open_recording(tiny_synthetic)
    trial = data.trials.start[0]
    index = DatasetIndex(tiny_synthetic.stem, trial + 1.0, trial + 1.0 + spec.length)
    a, b = plain[index]["frames"].obj, moved[index]["frames"].obj
    shown = np.flatnonzero(data.stimulus.start <= trial)[-1]          # the presentation of the window
    movie = data.stimulus.movie_index[shown]
    onsets = data.stimulus.start[shown] + (b["index"].numpy() - data.movie_table.first_frame[movie]) / \
        data.movie_table.frame_rate[movie]
    np.testing.assert_allclose(b["time"].numpy(), onsets - float(moved[index]["t0"]), atol=1e-6)
    assert len(onsets) == 4 and np.abs(b["pixels"].numpy().astype(int) - a["pixels"].numpy()).max() > 10
    x = 1.5 * behavior_at(data, "eye.phi", onsets)
    y = 1.5 * behavior_at(data, "eye.theta", onsets)
    assert np.abs(x).max() > 0.5
    np.testing.assert_array_equal(b["pixels"].numpy(), eye_centred(a["pixels"].numpy(), x, y))


def test_glm_stimulus_components_follow_the_gaze(tiny_synthetic):
    data = open_recording(tiny_synthetic)
    cfg = GLMConfig(stim_components=4, gaze=GAZE)
    pcs = StimulusPCs.fit(data, tiny_synthetic, cfg, None)
    times = data.trials.start[0] - 0.05 + np.arange(0, 1.0, 0.007)     # from grey screen into a trial
    frame = frame_on_screen(data, times)
    small = _block_average(movie_frame_dataset(data), cfg.downsample)
    expected = np.zeros((len(times), 4), np.float32)
    for t, (i, when) in enumerate(zip(frame, times)):
        if i >= 0:
            x, y = GAZE.pixels(data, np.array([when]))
            moved = eye_centred(small[i][None], x / cfg.downsample, y / cfg.downsample)
            expected[t] = pcs.pca.transform(moved.reshape(1, -1))[0]
    assert (frame < 0).any() and (frame >= 0).any()
    np.testing.assert_allclose(pcs.at(data, times), expected, rtol=1e-5, atol=1e-5)
    still = StimulusPCs.fit(data, tiny_synthetic, GLMConfig(stim_components=4), None)
    assert not np.allclose(still.at(data, times), expected, atol=1e-2)


@pytest.mark.parametrize("window, model, problem", [
    ({"frames": 0}, {}, "needs window.frames > 0"),
    ({}, {"backbone": {"name": "resnet18"}}, "not the cached features"),
    ({"gaze": {"x": "eye.phi", "pixels_per_unit": float("nan")}}, {}, "finite"),
    ({"gaze": {"x": "eye.phi", "pixels_per_unit": -1.0}}, {}, "must be > 0"),
    ({"gaze": {"x": 3}}, {}, "expected str"),
])
def test_gaze_config_refusals(window, model, problem):
    raw = {"window": {"gaze": {"x": "eye.phi", "y": "eye.theta"}} | {"frames": 0.15} | window, "model": model}
    raw["window"]["gaze"] = {"x": "eye.phi", "y": "eye.theta"} | window.get("gaze", {})
    with pytest.raises(InputError, match=problem):
        config_from_dict(raw, "c.yaml")


def test_a_gaze_variable_the_recording_lacks_is_named(tiny_synthetic):
    spec = WindowSpec(frames=0.15, gaze=Gaze("eye.nope", "eye.theta"))
    with pytest.raises(InputError, match=r"tiny.h5.*behavior.*eye.nope"):
        WindowDataset(RecordingSet([tiny_synthetic]), spec)
