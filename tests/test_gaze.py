"""Eye-centred frames: the shift against scipy's, the loader's and the GLM's frames against a
direct computation from the stored frames and the recorded gaze, and the config's refusals."""
import numpy as np
import pytest
from scipy.ndimage import shift as scipy_shift

from neuroformer.config import config_from_dict
from neuroformer.data.gaze import GREY, Gaze, eye_centred
from neuroformer.data.objects import DatasetIndex
from neuroformer.data.recording import behavior_at, frames_shown, movie_frame_dataset, open_recording
from neuroformer.data.windows import RecordingSet, WindowDataset, WindowSpec
from neuroformer.errors import InputError
from neuroformer.glm import GLMConfig, StimulusPCs, _block_average

GAZE = Gaze("eye.phi", "eye.theta", 1.5)


def test_eye_centred_is_scipys_bilinear_shift_by_minus_the_gaze():
    rng = np.random.default_rng(0)
    frames = (255 * rng.random((3, 12, 20))).astype(np.float32)
    x, y = np.array([1.3, -2.6, 0.0]), np.array([0.4, 3.1, -1.7])
    out = eye_centred(frames, x, y)
    for f in range(3):
        expected = scipy_shift(frames[f], (-y[f], -x[f]), order=1, mode="grid-constant", cval=GREY)
        np.testing.assert_allclose(out[f], expected, atol=1e-3)
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


def test_glm_stimulus_components_are_those_of_the_models_frames(tiny_synthetic):
    """Each time's components: the stored frame shown, moved by the gaze at its onset (as the
    loader moves it), block-averaged, projected."""
    data = open_recording(tiny_synthetic)
    cfg = GLMConfig(stim_components=4, gaze=GAZE)
    pcs = StimulusPCs.fit(data, tiny_synthetic, cfg, None)
    times = data.trials.start[0] - 0.05 + np.arange(0, 1.0, 0.007)     # from grey screen into a trial
    index, onset = frames_shown(data, times)
    expected = np.zeros((len(times), 4), np.float32)
    for t in np.flatnonzero(index >= 0):
        x, y = GAZE.pixels(data, onset[t:t + 1])
        seen = eye_centred(movie_frame_dataset(data)[index[t]][None], x, y)
        expected[t] = pcs.pca.transform(_block_average(seen, cfg.downsample).reshape(1, -1))[0]
    assert (index < 0).any() and len(np.unique(onset[index >= 0])) > 10
    np.testing.assert_allclose(pcs.at(data, times), expected, rtol=1e-4, atol=1e-4)
    assert pcs.at(data, np.zeros(0)).shape == (0, 4)
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


@pytest.mark.parametrize("gaze, targets, problem", [
    (Gaze("eye.nope", "eye.theta"), (), r"window.gaze.x: behaviour variable 'eye.nope': not found"),
    (Gaze("eye.phi", "eye.theta"), ("theta",), r"window.gaze.y: eye.theta is a decoded target"),
    (Gaze("eye.phi", "", 20.0), (), r"window.gaze.pixels_per_unit: eye.phi up to .* pixels off a 112-pixel frame"),
    (Gaze("", "running.speed", 100.0), (), r"window.gaze.pixels_per_unit: running.speed up to .* 64-pixel frame"),
])
def test_gaze_variables_are_checked_against_the_recording(tiny_synthetic, gaze, targets, problem):
    spec = WindowSpec(frames=0.15, gaze=gaze, targets=targets, variables=targets)
    with pytest.raises(InputError, match=r"tiny.h5: " + problem):
        WindowDataset(RecordingSet([tiny_synthetic]), spec)
