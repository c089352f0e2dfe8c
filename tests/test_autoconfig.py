"""Configs that fit the recording: `neuroformer config`, and `train`/`decode` without --config,
on an array recording whose variables are not the synthetic ones and on the real NWB file."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from neuroformer.cli import main
from neuroformer.data.recording import class_count

from conftest import NWB_A8604

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")     # names the synthetic variables


@pytest.fixture(scope="module")
def hand_recording(tmp_path_factory):
    """16 s of 8 units in 10 ms bins, no movie, a hand velocity and a direction class (0..3) at 50 ms."""
    root = tmp_path_factory.mktemp("hand")
    rng = np.random.default_rng(0)
    np.savez(root / "hand.npz", spikes=rng.poisson(0.2, (8, 1600)), hand_vx=rng.normal(size=320),
             direction=rng.integers(0, 4, 320))
    out = root / "hand.h5"
    assert main(["prepare", str(root / "hand.npz"), "--bin-size", "0.01", "--behavior", "hand_vx=0.05",
                 "--behavior", "direction=0.05", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def nwb_recording(tmp_path_factory):
    out = tmp_path_factory.mktemp("nwb") / "a8604.h5"
    assert main(["prepare", str(NWB_A8604), "-o", str(out)]) == 0
    return out


def test_class_labels_are_few_non_negative_integers():
    assert class_count(np.array([0, 3, 7, 1])) == 8 and class_count(np.array([True, False])) == 2
    assert class_count(np.array([0.0, 1.0, 2.0])) == 0                  # floats are quantities
    assert class_count(np.array([-1, 0, 1])) == 0 and class_count(np.arange(0, 360, 45)) == 0


def test_config_writes_the_recordings_variables_and_train_accepts_it(hand_recording, tmp_path, capsys):
    cfg = tmp_path / "hand.yaml"
    assert main(["config", "--data", str(hand_recording), "--predict", "direction", "-o", str(cfg)]) == 0
    assert "inputs hand_vx.hand_vx; targets direction.direction" in capsys.readouterr().out
    raw = yaml.safe_load(cfg.read_text())
    assert raw["window"]["frames"] == 0                                  # no movie
    assert raw["modalities"]["behavior"]["variables"] == {
        "hand_vx.hand_vx": {"predict": False},
        "direction.direction": {"predict": True, "objective": "classification", "n_classes": 4}}
    assert main(["train", "--config", str(cfg), "--data", str(hand_recording), "-o", str(tmp_path / "run"),
                 "--max-steps", "2"]) == 0
    assert (tmp_path / "run" / "best.pt").exists()


def test_templates_keep_their_frames_with_a_movie_and_their_choice_of_inputs(tiny_synthetic, tmp_path):
    cfg = tmp_path / "syn.yaml"
    assert main(["config", "--data", str(tiny_synthetic), "--template", "decoding", "--predict", "speed",
                 "-o", str(cfg)]) == 0
    raw = yaml.safe_load(cfg.read_text())
    assert raw["window"]["frames"] == 0.15 and raw["window"]["target_lag"] == 0.25
    assert raw["modalities"]["behavior"]["variables"] == {"running.speed": {"predict": True}}   # no inputs
    assert main(["config", "--data", str(tiny_synthetic), "--template", "nope", "-o", str(cfg)]) == 2


def test_train_and_decode_without_config_on_an_array_recording(hand_recording, tmp_path, capsys):
    assert main(["train", "--data", str(hand_recording), "-o", str(tmp_path / "run"), "--max-steps", "2"]) == 0
    assert main(["decode", "--data", str(hand_recording), "--target", "hand_vx", "--steps", "2",
                 "--baselines", "ridge", "-o", str(tmp_path / "decode.json")]) == 0
    assert "hand_vx.hand_vx" in capsys.readouterr().out


def test_train_without_config_on_the_real_nwb_file(nwb_recording, tmp_path, capsys):
    assert main(["train", "--data", str(nwb_recording), "-o", str(tmp_path / "run"), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["decode", "--data", str(nwb_recording), "--target", "speed", "--baselines", "ridge",
                 "-o", str(tmp_path / "decode.json")]) == 2                 # this file has no behaviour
    assert capsys.readouterr().err.strip().endswith("behaviour variable 'speed': not found; the recording has none")


@pytest.mark.parametrize("verb", [["train", "--max-steps", "2"], ["decode", "--target", "hand_vx", "--steps", "2"]])
def test_a_config_naming_a_missing_variable_is_a_one_line_error(verb, hand_recording, tmp_path, capsys):
    args = [verb[0], "--config", DEMO, "--data", str(hand_recording), "-o", str(tmp_path / "out"),
            *verb[1:]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'running.speed': not found" in err
    assert "the recording has ['direction.direction', 'hand_vx.hand_vx']" in err


def test_a_dense_recording_reads_its_history_through_latents(hand_recording, tmp_path):
    from neuroformer.autoconfig import LATENTS, derive_raw

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "dense.npz", spikes=rng.poisson(0.4, (60, 400)), hand_vx=rng.normal(size=80))
    dense = tmp_path / "dense.h5"                   # 60 units at 40 Hz: ~1,200 spikes in 0.5 s of history
    assert main(["prepare", str(tmp_path / "dense.npz"), "--bin-size", "0.01", "--behavior", "hand_vx=0.05",
                 "-o", str(dense)]) == 0
    assert derive_raw(dense, "decoding", ["hand_vx"])["model"]["latents"] == LATENTS
    assert "latents" not in derive_raw(dense, "circuit")["model"]              # 50 ms of history: ~120 spikes
    assert "latents" not in derive_raw(hand_recording, "decoding", ["hand_vx"])["model"]    # 8 units: ~80


def test_the_demo_template_keeps_gaze_and_adaptation_only_where_they_apply(tiny_synthetic, hand_recording, tmp_path):
    from neuroformer.autoconfig import derive_raw
    from neuroformer.data.synthetic import SyntheticConfig, write_synthetic

    template = yaml.safe_load(Path(DEMO).read_text())
    raw = derive_raw(tiny_synthetic)                                   # a movie and both gaze variables
    assert raw["window"]["gaze"] == template["window"]["gaze"] and raw["window"]["adaptation"] == 6.0
    assert raw["model"]["stimulus_features"] == 8
    raw = derive_raw(tiny_synthetic, predict=["phi"])                  # a decoded gaze would be shown
    assert "gaze" not in raw["window"] and raw["window"]["adaptation"] == 6.0
    raw = derive_raw(hand_recording)                                   # no movie: no stimulus filter
    assert raw["window"]["frames"] == 0 and not {"gaze", "adaptation"} & set(raw["window"])
    assert "stimulus_features" not in raw["model"]
    slow = write_synthetic(tmp_path / "slow.h5", SyntheticConfig(n_neurons=10, trial_length=12.0, n_movies=1,
                                                                  n_trials=2, n_heldout_movies=1, heldout_trials=1,
                                                                  frame_rate=1.0))[0]
    assert derive_raw(slow)["window"]["adaptation"] == 10.0              # 10 frames 1 s apart
    for path in (tiny_synthetic, hand_recording, slow):                  # each one a config train accepts
        assert main(["train", "--data", str(path), "-o", str(tmp_path / f"run_{Path(path).stem}"),
                     "--max-steps", "1"]) == 0


def test_a_gaze_variable_that_is_a_target_is_refused_in_training(tiny_synthetic, tmp_path, capsys):
    raw = yaml.safe_load(Path(DEMO).read_text())
    raw["modalities"]["behavior"]["variables"]["eye.phi"] = {"predict": True}
    cfg = tmp_path / "leak.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(cfg), "--data", str(tiny_synthetic), "-o", str(tmp_path / "run"),
                 "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "window.gaze.x: eye.phi is a decoded target" in err
