"""Contrast adaptation of the GLM's stimulus filter (`window.adaptation`): the frames its running
statistics are read from, the standardisation against a direct computation, and generation
with it (cached = naive, float64)."""
import dataclasses

import numpy as np
import pytest
import torch

from neuroformer.config import config_from_dict
from neuroformer.connectivity import unit_log_probs
from neuroformer.data.objects import DatasetIndex
from neuroformer.data.windows import ADAPTATION_RATE, ADAPTATION_SLACK, LoaderOptions, collate_windows, make_loader
from neuroformer.errors import InputError
from neuroformer.data.recording import save_recording
from neuroformer.model import Neuroformer
from neuroformer.training import RunOptions, train
from neuroformer.assembly import window_spec
from conftest import known_recording
from test_generate import _rows, assert_generation_exact
from test_score import PP_CFG

SPAN = 2.0
ADAPT_CFG = {**PP_CFG, "window": {**PP_CFG["window"], "adaptation": SPAN},
             "model": {**PP_CFG["model"], "stimulus_features": 2}}


@pytest.fixture(scope="module")
def adapting(tiny_synthetic):
    torch.manual_seed(0)
    cfg = config_from_dict(ADAPT_CFG)
    loader = make_loader([tiny_synthetic], window_spec(cfg), LoaderOptions(batch_size=6, seed=3))
    model = Neuroformer(cfg, len(loader.dataset.vocab), frame_shape=(64, 112)).double().eval()
    with torch.no_grad():                       # away from the zero start, so every term matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.stim_prior[1].fill_(-1.0)
    return model, next(iter(loader)), loader.dataset


def test_adaptation_frames_are_every_kth_frame_of_the_windows_presentations_before_it(adapting):
    _, batch, dataset = adapting
    data = dataset.recordings.get_recording(dataset.recordings.recording_ids[0])
    pres, table = data.stimulus, data.movie_table
    movie = np.asarray(data.movies.frames)
    current, reach = dataset.spec.current, SPAN + dataset.spec.frames + ADAPTATION_SLACK   # every frame's span
    checked = earlier = 0
    for b in range(len(batch["t0"])):
        t0, adapt = float(batch["t0"][b]), _rows(batch["adapt"], b)
        want = []                                   # (time, presentation, stored frame, duration)
        for k in np.flatnonzero(pres.end > t0 + current - dataset.spec.frames):   # presentations of the window's frames
            m = int(pres.movie_index[k])
            fps, every = float(table.frame_rate[m]), int(round(float(table.frame_rate[m]) / ADAPTATION_RATE))
            for i in range(0, int(table.n_frames[m]), every):
                t = float(pres.start[k]) + i / fps
                if t0 + current - reach <= t < t0 + current:
                    want.append((t - t0, k, int(table.first_frame[m]) + i, every / fps))
        n = int(adapt["mask"].sum())
        assert n == len(want)
        if n:
            np.testing.assert_allclose(adapt["time"][:n].numpy(), [w[0] for w in want], atol=1e-5)
            assert adapt["presentation"][:n].tolist() == [w[1] for w in want]
            assert adapt["index"][:n].tolist() == [w[2] for w in want]
            np.testing.assert_allclose(adapt["duration"][:n].numpy(), [w[3] for w in want], rtol=1e-6)
            np.testing.assert_array_equal(adapt["pixels"][:n].numpy(), movie[[w[2] for w in want]])
            checked += n
            earlier += min(w[0] for w in want) < -dataset.spec.before      # read from before the window's span
    assert checked > 10 and earlier > 0


def test_adapted_drive_is_the_running_standardisation_over_the_presentation_so_far(adapting):
    model, batch, _ = adapting
    frames, adapt = batch["frames"], batch["adapt"]
    with torch.no_grad():
        drive, past = model.filtered(frames), model.filtered(adapt)
        z = model.adapted(drive, frames, adapt)
    tau = SPAN / 2
    mean0, sd0 = model.stim_prior[0].detach().numpy(), model.stim_prior[1].detach().exp().numpy()
    checked = 0
    for b in range(len(drive)):
        for f in np.flatnonzero(frames["mask"][b].numpy()):
            t, k = float(frames["time"][b, f]), int(frames["presentation"][b, f])
            weight, values = [tau], [None]
            for g in np.flatnonzero(adapt["mask"][b].numpy()):
                age = t - float(adapt["time"][b, g])
                if int(adapt["presentation"][b, g]) == k and 0 <= age < SPAN + 1e-3:
                    weight.append(np.exp(-age / tau) * float(adapt["duration"][b, g]))
                    values.append(past[b, g].numpy())
            w = np.array(weight)
            mean = (w[0] * mean0 + sum(wi * v for wi, v in zip(w[1:], values[1:]))) / w.sum()
            var = (w[0] * (sd0 ** 2 + (mean0 - mean) ** 2)
                   + sum(wi * (v - mean) ** 2 for wi, v in zip(w[1:], values[1:]))) / w.sum()
            np.testing.assert_allclose(z[b, f].numpy(), (drive[b, f].numpy() - mean) / np.sqrt(var), rtol=1e-5, atol=1e-8)
            checked += len(values) > 2
    assert checked > 5                              # frames with several earlier ones of their presentation


def test_a_frame_has_the_same_adapted_drive_in_every_window_that_shows_it(adapting):
    model, batch, dataset = adapting
    rid, spec = dataset.recordings.recording_ids[0], dataset.spec
    data = dataset.recordings.get_recording(rid)
    start = float(data.stimulus.start[1]) + 3.0                   # well inside a presentation, > SPAN / 2 in
    drives = []
    for shift in (0.0, 0.02, 0.04):                               # windows sharing a frame
        t0 = start + shift
        one = collate_windows([dataset[DatasetIndex(rid, t0 - spec.before, t0 + spec.current)]])
        with torch.no_grad():
            z = model.adapted(model.filtered(one["frames"]), one["frames"], one["adapt"])[0]
        times = (one["frames"]["time"][0] + float(one["t0"][0])).numpy()
        drives.append({round(float(t), 4): z[f] for f, t in enumerate(times) if one["frames"]["mask"][0, f]})
    shared = set(drives[0]) & set(drives[1]) & set(drives[2])
    assert shared
    for t in shared:
        torch.testing.assert_close(drives[1][t], drives[0][t], rtol=1e-6, atol=1e-7)   # float32 times
        torch.testing.assert_close(drives[2][t], drives[0][t], rtol=1e-6, atol=1e-7)   # float32 times


def test_a_stronger_movie_is_standardised_to_the_same_drive(adapting):
    """Doubling every frame's contrast doubles a linear filter's output, and its running
    statistics with it: once the presentation has run for long, the adapted drive hardly moves."""
    model, batch, _ = adapting
    with torch.no_grad():
        model64 = Neuroformer(model.cfg, model.unit_emb.num_embeddings, frame_shape=(64, 112)).double().eval()
        model64.load_state_dict(model.state_dict())
        model64.stim_prior[0].zero_()
        model64.stim_prior[1].fill_(-30.0)          # the prior's s.d. is nothing next to the frames'
        model64.stim_features.bias.zero_()

        def adapted(scale):
            frames = {**batch["frames"], "pixels": _contrast(batch["frames"]["pixels"], scale)}
            adapt = {**batch["adapt"], "pixels": _contrast(batch["adapt"]["pixels"], scale)}
            return model64.adapted(model64.filtered(frames), frames, adapt)
        one, two = adapted(0.5), adapted(1.0)
        raw_one = model64.filtered({**batch["frames"], "pixels": _contrast(batch["frames"]["pixels"], 0.5)})
        raw_two = model64.filtered(batch["frames"])
    shown = batch["frames"]["mask"]
    torch.testing.assert_close(raw_two[shown], 2 * raw_one[shown], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(two[shown], one[shown], rtol=1e-3, atol=1e-3)


def _contrast(pixels, scale):
    """Frames with their contrast about the mid grey scaled (kept as float pixel values)."""
    return (pixels.double() - 127.5) * scale + 127.5


def test_cached_and_naive_generation_with_adaptation_give_identical_spikes(adapting):
    model, batch, dataset = adapting
    assert_generation_exact(model, batch, dataset, 20)


@pytest.mark.parametrize("change, problem", [
    ({"model": {"stimulus_features": 0}}, "needs model.stimulus_features"),
    ({"window": {"adaptation": -1.0}}, "window.adaptation"),
    ({"window": {"adaptation": float("nan")}}, "window.adaptation"),
    ({"window": {"adaptation": 0.5}}, r"window.adaptation: must be 0 \(off\) or in \[1, 3600\] s"),
    ({"window": {"adaptation": 1e300}}, r"window.adaptation: must be 0 \(off\) or in \[1, 3600\] s"),
])
def test_adaptation_config_errors_are_named(change, problem):
    raw = {key: {**value, **change.get(key, {})} if isinstance(value, dict) else value
           for key, value in ADAPT_CFG.items()}
    with pytest.raises(InputError, match=problem):
        config_from_dict(raw)


def test_perturbation_reads_the_adapting_glm_with_its_behaviour_and_stimulus_terms(adapting):
    """The perturbation read-out scores units with the window's whole context (frames, the
    adaptation frames, behaviour inputs), as training does."""
    model, batch, dataset = adapting
    one = _rows(batch, [0])
    cur = one["current"]
    tokens = torch.as_tensor(dataset.unit_tokens[dataset.recordings.recording_ids[0]])
    with torch.no_grad():
        memory, _ = model.encode_context(one)
        _, logits = model.spike_outputs(one, memory, model.decode(cur, memory))
        read = unit_log_probs(model, one, cur, tokens)
    later = cur["mask"] & (cur["dt_target"] > 0)             # gap 0 orders units; the read-out does not
    assert later.sum() > 3
    torch.testing.assert_close(read[later], logits[..., tokens].log_softmax(-1)[later])


def test_a_span_holding_too_few_statistics_frames_is_refused(tmp_path):
    """The known recording's 10 Hz movie gives the statistics a frame every 0.2 s: 1 s holds 5."""
    path = save_recording(known_recording(), tmp_path / "known.h5")
    spec = window_spec(config_from_dict({**ADAPT_CFG, "window": {**ADAPT_CFG["window"], "adaptation": 1.0},
                                         "modalities": {}}))
    with pytest.raises(InputError, match=r"known.h5: window.adaptation: 1 s holds fewer than 10 .* use at least 2 s"):
        make_loader([path], spec)
    make_loader([path], dataclasses.replace(spec, adaptation=2.0))


def test_training_stops_with_a_named_error_when_the_loss_is_not_finite(tiny_synthetic, tmp_path, monkeypatch):
    forward = Neuroformer.forward

    def diverged(self, batch, glm_only=False):
        out = forward(self, batch, glm_only)
        return {**out, "loss": out["loss"] * float("nan")}
    monkeypatch.setattr(Neuroformer, "forward", diverged)
    cfg = config_from_dict({**ADAPT_CFG, "train": {"batch_size": 4, "max_steps": 3, "eval_every": 3}})
    with pytest.raises(InputError, match="loss: nan at step 1: training diverged"):
        train(cfg, [tiny_synthetic], RunOptions(tmp_path / "run"))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_contrastive_loss_takes_a_batch_without_frames(adapting):
    model, batch, _ = adapting
    frames = {k: v[:, :0] for k, v in batch["frames"].items()}
    x = torch.randn(len(batch["t0"]), 3, model.cfg.model.width, dtype=torch.float64)
    pooled = torch.zeros(len(x), model.cfg.model.width, dtype=torch.float64)
    loss, correct, count = model.contrastive(x, torch.ones(len(x), 3, dtype=torch.bool), pooled, frames)
    assert float(loss.detach()) == 0 and int(count) == 0
