"""The window loader: tokens, targets, history, frames and behaviour against hand-computed values."""
import numpy as np
import pytest
import torch

from neuroformer.data.objects import DatasetIndex
from neuroformer.data.recording import open_recording
from neuroformer.data.vocab import PAD, START, UnitVocab
from neuroformer.data.windows import (IGNORE, LoaderOptions, RecordingSet, WindowDataset, WindowSpec,
                                      collate_windows, make_loader)
from neuroformer.errors import InputError

SPEC = WindowSpec(current=0.05, history=0.05, frames=0.15, behavior=0.05, variables=("speed",))


def _dataset(path, spec=SPEC, vocab=None):
    return WindowDataset(RecordingSet([path]), spec, vocab)


def test_current_tokens_targets_and_tie_order(known_file):
    ds = _dataset(known_file)
    assert ds.vocab.unit_ids == ["s/a", "s/b", "s/c"]
    sample = ds[DatasetIndex("known", 0.0, 0.15)]          # t0 = 0.1 (before = 0.1)
    cur = sample["current"].obj
    # spikes in [0.1, 0.15): c@0.1000, b@0.1004, a@0.1004, c@0.1210 -> grid bins 0, 0, 0, 21
    # ties within a 1 ms bin are ordered by unit index: a(2), b(3), c(4)
    assert cur["unit"].tolist() == [START, 2, 3, 4, 4]
    assert np.allclose(cur["time"].numpy(), [0, 0, 0, 0, 0.021])
    assert cur["dt_target"].tolist() == [0, 0, 0, 21, SPEC.end_class]
    assert cur["unit_target"].tolist() == [2, 3, 4, 4, IGNORE]
    assert SPEC.end_class == 51 and SPEC.n_dt == 51
    assert int(sample["n_spikes"]) == 4
    assert float(sample["t0"]) == pytest.approx(0.1)


def test_history_frames_and_behaviour(known_file):
    ds = _dataset(known_file)
    sample = ds[DatasetIndex("known", 0.1, 0.25)]          # t0 = 0.2
    cur, hist = sample["current"].obj, sample["history"].obj
    assert cur["unit"].tolist() == [START] and cur["dt_target"].tolist() == [SPEC.end_class]
    assert hist["unit"].tolist() == [2, 3]                  # a@0.15, b@0.18
    assert np.allclose(hist["time"].numpy(), [-0.05, -0.02])
    frames = sample["frames"].obj                           # onsets in [0.1, 0.25): frames 1 and 2
    assert frames["pixels"][:, 0, 0].tolist() == [10, 20] and frames["index"].tolist() == [1, 2]
    assert np.allclose(frames["time"].numpy(), [-0.1, 0.0])
    beh = sample["behavior.speed"].obj                      # samples in [0.2, 0.25) at 100 Hz, under the name asked for
    assert beh["value"].tolist() == [20, 21, 22, 23, 24]
    assert np.allclose(beh["time"].numpy(), [0, 0.01, 0.02, 0.03, 0.04], atol=1e-6)


def test_targets_are_read_target_lag_early(known_file):
    lagged = WindowSpec(current=0.05, history=0.05, frames=0.15, behavior=0.05, variables=("speed",),
                        targets=("speed",), target_lag=0.1)
    as_input = WindowSpec(**{**lagged.__dict__, "targets": ()})       # the same variable as an input: no lag
    assert lagged.before == pytest.approx(0.1) and WindowSpec(**{**lagged.__dict__, "target_lag": 0.2}).before == 0.2
    for spec, values in ((lagged, [10, 11, 12, 13, 14]), (as_input, [20, 21, 22, 23, 24])):
        beh = _dataset(known_file, spec)[DatasetIndex("known", 0.1, 0.25)]["behavior.speed"].obj   # t0 = 0.2
        assert beh["value"].tolist() == values
        assert np.allclose(beh["time"].numpy() + (0.1 if spec is lagged else 0.0), [0, 0.01, 0.02, 0.03, 0.04],
                           atol=1e-6)


def test_collate_pads_with_masks_and_ignored_targets(known_file):
    ds = _dataset(known_file)
    batch = collate_windows([ds[DatasetIndex("known", 0.0, 0.15)], ds[DatasetIndex("known", 0.1, 0.25)]])
    cur = batch["current"]
    assert cur["unit"].shape == (2, 5)
    assert cur["mask"].tolist() == [[True] * 5, [True] + [False] * 4]
    assert cur["unit"][1].tolist() == [START, PAD, PAD, PAD, PAD]
    assert cur["dt_target"][1].tolist() == [SPEC.end_class] + [IGNORE] * 4
    assert batch["history"]["mask"].tolist() == [[False, False], [True, True]]


def test_random_windows_are_seeded_and_stay_inside_the_split(tiny_synthetic):
    spec = WindowSpec(variables=("running.speed",))
    def t0s(seed):
        loader = make_loader([tiny_synthetic], spec, LoaderOptions(batch_size=8, seed=seed))
        return torch.cat([b["t0"] for b in loader]).numpy()
    a, b, c = t0s(1), t0s(1), t0s(2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    data = open_recording(tiny_synthetic)
    train = data.train_domain
    inside = [(np.any((train.start <= t - spec.before + 1e-9) & (t + spec.current <= train.end + 1e-9))) for t in a]
    assert all(inside)
    for other in (data.valid_domain, data.test_domain):
        assert not any(np.any((other.start < t + spec.current) & (other.end > t - spec.before)) for t in a)


def test_sequential_windows_tile_the_split(tiny_synthetic):
    spec = WindowSpec(frames=0, behavior=0)
    loader = make_loader([tiny_synthetic], spec, LoaderOptions(split="test", shuffle=False, batch_size=64))
    t0 = torch.cat([b["t0"] for b in loader]).numpy()
    gaps = np.diff(t0)
    assert np.allclose(gaps[gaps < 0.2], spec.current)      # steps of one current window within a trial


def test_several_recordings_share_one_vocabulary(tiny_synthetic, known_file):
    spec = WindowSpec(frames=0, behavior=0.05, variables=("speed",))
    loader = make_loader([tiny_synthetic, known_file], spec, LoaderOptions(batch_size=16))
    vocab = loader.dataset.vocab
    assert len(vocab) == 2 + 30 + 3
    seen = torch.cat([b["current"]["unit"][b["current"]["mask"]] for b in loader])
    assert seen.max() < len(vocab) and (seen[seen != START] >= 2).all()


def test_vocabulary_extends_and_rejects_unknown_units(known_file):
    vocab = UnitVocab(["x/1"])
    with pytest.raises(InputError, match=r"known.h5: units.id: 3 unit ids not in the vocabulary"):
        _dataset(known_file, vocab=vocab)
    vocab.extend(["s/a", "s/b", "s/c"])
    ds = _dataset(known_file, vocab=vocab)
    assert ds.unit_tokens["known"].tolist() == [3, 4, 5]
    assert UnitVocab.from_state_dict(vocab.state_dict()).words == vocab.words


def test_recordings_with_different_frame_sizes_are_refused(tiny_synthetic, known_file):
    with pytest.raises(InputError, match=r"tiny.h5: movies.frames: frame size \(64, 112\) differs from \(4, 6\)"):
        make_loader([tiny_synthetic, known_file], WindowSpec())


def test_torch_brain_dataset_reads_the_file_lazily(tiny_synthetic):
    from neuroformer.data.objects import Dataset

    ds = Dataset(tiny_synthetic.parent, recording_ids=[tiny_synthetic.stem])
    piece = ds[DatasetIndex(tiny_synthetic.stem, 2.0, 3.0)]
    times = np.asarray(piece.spikes.timestamps)
    assert len(times) > 0 and times.min() >= 0 and times.max() < 1.0       # origin reset to the start
    assert np.asarray(piece.behavior.running.speed).shape == (50,)


def test_worker_processes_give_the_same_batches(tiny_synthetic):
    spec = WindowSpec(variables=("eye.phi",))
    def batches(workers):
        loader = make_loader([tiny_synthetic], spec, LoaderOptions(batch_size=8, seed=3, num_workers=workers))
        return [(b["t0"], b["current"]["unit"], b["frames"]["pixels"], b["behavior.eye.phi"]["value"]) for b in loader]
    for a, b in zip(batches(0), batches(2), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
