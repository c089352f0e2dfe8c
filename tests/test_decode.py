"""Behaviour decoding: held-out samples scored once, selection blind to test data, decoded
variables never inputs, finetuning and new-session weights, binned-count recordings."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

from neuroformer.assembly import build, window_spec
from neuroformer.checkpoints import load_checkpoint, load_matching, load_model
from neuroformer.cli import main
from neuroformer.config import config_from_dict
from neuroformer.data.objects import DatasetIndex, Interval
from neuroformer.data.recording import first_fraction, open_recording
from neuroformer.data.synthetic import SyntheticConfig, write_synthetic
from neuroformer.data.vocab import UnitVocab
from neuroformer.data.windows import collate_windows
from neuroformer.errors import InputError
from neuroformer.decoding import (CORRECTION, MIN_EVALS, Samples, baseline_results, by_stimulus, checkpoint_candidates, choose, decode,
                               decode_config, decode_samples, format_report, novel_stimulus, probe_features,
                               neuroformer_predictions, probe_results, split_samples, train_decoder,
                               window_tiling)
from neuroformer.decoders import BinnedSplit, baseline_grid
from neuroformer.training import RunOptions, epoch_batches, train

from conftest import TINY, check_provenance

STUDY = Path(__file__).resolve().parents[1] / "analysis" / "decoding.py"

CONFIG = {
    "window": {"current": 0.05, "history": 0.05, "frames": 0.1, "behavior": 0.05, "target_lag": 0.03, "dt_res": 0.001},
    "modalities": {"behavior": {"variables": {"running.speed": {}, "eye.phi": {}, "eye.theta": {}}}},
    "model": {"width": 32, "heads": 2, "decoder_layers": 1, "dropout": 0.0, "backbone": {"patch": 16}},
    "train": {"batch_size": 8, "lr": 2e-3, "warmup_steps": 2, "max_steps": 10, "eval_every": 2, "eval_batches": 2,
              "checkpoint_every": 10},
}
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def joint(tiny_synthetic, config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("decode") / "joint.json"
    with mock.patch("neuroformer.decoders.GRU_STEPS", 20):             # the GRU is a baseline here, not the subject
        return out, decode(tiny_synthetic, ["speed", "phi"], out, config=config_file, baselines=("ridge", "gru"),
                           steps=10, progress=False)


@pytest.mark.parametrize("lag", [0.0, 0.1])
def test_split_samples_are_disjoint_and_each_tiled_once(tiny_synthetic, lag):
    data = open_recording(tiny_synthetic)
    before = 0.05 + lag                                  # what a window spec with this target lag asks for
    samples = {s: split_samples(data, ["running.speed"], s, before, 0.05, lag=lag) for s in SPLITS}
    times = np.concatenate([samples[s].times for s in SPLITS])
    assert len(np.unique(times)) == len(times)
    t_all = np.asarray(data.behavior.running.timestamps)
    for s in SPLITS:
        dom = getattr(data, f"{s}_domain")
        inside = np.zeros(len(t_all), bool)
        for a, b in zip(dom.start, dom.end):
            inside |= (t_all >= a + 0.05) & (t_all < b - lag)
        np.testing.assert_array_equal(samples[s].times, t_all[inside])          # all of them, nothing else
        tiles = window_tiling(samples[s], before, 0.05, lag)
        rows = np.concatenate([r for _, r in tiles])
        np.testing.assert_array_equal(np.sort(rows), np.arange(len(samples[s].times)))
        for t0, r in tiles:
            k = samples[s].interval[r[0]]
            shifted = samples[s].times[r] + lag            # a target is read `lag` s before the current span
            assert np.all((shifted >= t0 - 1e-9) & (shifted < t0 + 0.05))
            assert t0 - before >= dom.start[k] - 1e-9 and t0 + 0.05 <= dom.end[k] + 1e-9


def test_last_window_is_aligned_to_the_interval_end():
    t = np.round(np.arange(0.06, 0.33, 0.02), 6)
    s = Samples(t, t[:, None], np.zeros(len(t), int), np.array([0.0]), np.array([0.33]))
    tiles = window_tiling(s, before=0.05, current=0.05)
    assert [round(t0, 6) for t0, _ in tiles] == [0.05, 0.1, 0.15, 0.2, 0.25, 0.28]
    assert list(tiles[-1][1]) == [12, 13]                     # 0.30 and 0.32: past the last full window


def test_lagged_counts_never_cross_intervals():
    counts = [np.array([[1], [2], [3]]), np.array([[10], [20]])]
    split = BinnedSplit(counts, interval=np.array([0, 1, 1]), bin=np.array([2, 0, 1]), y=np.zeros((3, 1)))
    np.testing.assert_array_equal(split.lagged(1), [[2, 3, 0], [0, 10, 20], [10, 20, 0]])


def test_first_fraction_is_nested_and_contiguous():
    iv = Interval(start=np.array([0.0, 10.0]), end=np.array([4.0, 16.0]))
    small, large = first_fraction(iv, 0.2), first_fraction(iv, 0.5)
    np.testing.assert_allclose(small.end, [2.0])
    np.testing.assert_allclose(large.end, [4.0, 11.0])
    assert first_fraction(iv, 1.0) is iv


def test_a_block_shorter_than_a_batch_is_passed_over_again():
    recordings = mock.Mock(get_sampling_intervals=lambda split: {"r": Interval(start=np.array([0.0, 10.0]),
                                                                                end=np.array([2.0, 16.0]))})
    spec = mock.Mock(length=0.55)
    small = epoch_batches(recordings, spec, "train", 8, seed=0, epoch=0, fraction=0.25)     # the first 2 s
    assert len(small) == 1 and len(small[0]) == 8
    assert all(0.0 <= w.start and w.end <= 2.0 + 1e-9 for w in small[0])
    assert len({round(w.start, 6) for w in small[0]}) > 3                                  # new offsets each pass
    assert epoch_batches(recordings, spec, "train", 8, seed=0, epoch=0, fraction=0.02) == []  # 0.32 s: no window
    full = epoch_batches(recordings, spec, "train", 8, seed=0, epoch=0)
    assert len(full) == 1 and {w.start < 2 for w in full[0]} == {False, True}


def test_a_few_shot_run_standardises_its_targets_on_its_labels_only(tiny_synthetic, tmp_path):
    data = open_recording(tiny_synthetic)
    cfg = decode_config(config_from_dict(CONFIG), data, ["running.speed"])
    train(cfg, [tiny_synthetic], RunOptions(tmp_path / "few", max_steps=1, train_fraction=0.3))
    stats = load_checkpoint(tmp_path / "few" / "last.pt")[1]["behavior_stats"]
    block = first_fraction(data.train_domain, 0.3)
    t, speed = np.asarray(data.behavior.running.timestamps), np.asarray(data.behavior.running.speed)
    inside = np.zeros(len(t), dtype=bool)
    for a, b in zip(block.start, block.end):
        inside |= (t >= a) & (t < b)
    assert 0 < inside.sum() < 0.5 * len(t)
    k = (cfg.variables(False) + cfg.variables(True)).index("running.speed")
    np.testing.assert_allclose(stats[k], [speed[inside].mean(), speed[inside].std() + 1e-6], rtol=1e-5)


def test_a_decode_stopped_before_its_first_checkpoint_trains_again(tiny_synthetic, config_file, tmp_path):
    run = train_decoder(tiny_synthetic, ["running.speed"], tmp_path / "d", "joint", config=config_file, steps=2)
    (run / "last.pt").unlink()                         # what an attempt killed before its first checkpoint leaves
    assert train_decoder(tiny_synthetic, ["running.speed"], tmp_path / "d", "joint", config=config_file, steps=2) == run
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (run / "last.pt").exists() and steps == sorted(steps)          # one run's log, from its first step


def test_a_block_without_a_window_is_an_error(tiny_synthetic, config_file, tmp_path):
    cfg = config_from_dict(yaml.safe_load(config_file.read_text()))
    with pytest.raises(InputError, match="holds no 0.1 s window"):
        train(cfg, [tiny_synthetic], RunOptions(tmp_path / "r", max_steps=2, train_fraction=0.0001))


def test_choice_is_made_on_validation_and_blind_to_test(tiny_synthetic):
    data = open_recording(tiny_synthetic)
    samples = {s: split_samples(data, ["running.speed"], s, 0.05, 0.05) for s in SPLITS}
    samples["targets"], samples["classes"] = ["running.speed"], [0]
    y_valid, y_test = samples["valid"].values, samples["test"].values
    # the candidate that is perfect on test but noise on valid is not chosen
    rng = np.random.default_rng(0)
    good_on_test = ({"c": "test"}, rng.normal(size=y_valid.shape), y_test.copy())
    good_on_valid = ({"c": "valid"}, y_valid + rng.normal(size=y_valid.shape), rng.normal(size=y_test.shape))
    chosen = choose([good_on_test, good_on_valid], samples["valid"], samples["test"], samples["targets"])
    assert chosen["running.speed"]["params"] == {"c": "valid"}
    # baselines: hiding the test targets (NaN) changes no fitted setting and no validation score
    clean = baseline_results(data, samples, ("ridge", "glm"), 0.05, 0, progress=False)
    samples["test"] = Samples(samples["test"].times, np.full_like(y_test, np.nan), samples["test"].interval,
                              samples["test"].starts, samples["test"].ends)
    hidden = baseline_results(data, samples, ("ridge", "glm"), 0.05, 0, progress=False)
    for m in clean:
        a, b = clean[m]["running.speed"], hidden[m]["running.speed"]
        assert (a["params"], a["valid_r"], a["smoothing_samples"]) == (b["params"], b["valid_r"], b["smoothing_samples"])
        np.testing.assert_allclose(a["_test_prediction"], b["_test_prediction"])


def test_joint_report_and_decoded_variables_are_never_inputs(joint, tiny_synthetic):
    out, report = joint
    assert json.loads(out.read_text()) == report and out.with_suffix(".png").exists()
    for made in (out, out.with_suffix("") / "joint-f1-s0" / "run.json"):       # the model config, the seed
        check_provenance(made, 0, {"model": CONFIG["model"], "train": {"max_steps": 10, "batch_size": 8}})
    assert report["targets"] == ["running.speed", "eye.phi"]
    for t in report["targets"]:
        assert set(report["results"][t]) == {"neuroformer", "neuroformer, best.pt", "neuroformer, filter alone",
                                             "ridge", "gru"}
        for r in report["results"][t].values():
            assert -1 <= r["test_r"] <= 1 and -1 <= r["valid_r"] <= 1
        # each variable's checkpoint is chosen on valid among best.pt and the per-variable ones
        chosen, single = report["results"][t]["neuroformer"], report["results"][t]["neuroformer, best.pt"]
        assert chosen["valid_r"] >= single["valid_r"] and single["params"] == {"checkpoint": "best.pt"}
        assert chosen["params"]["checkpoint"] in ("best.pt", f"best-{report['targets'][0]}.pt",
                                                  f"best-{report['targets'][1]}.pt", "mean")
    run = out.with_suffix("") / "joint-f1-s0"
    # best.pt is the step of least validation behaviour error (mean over targets), not of least total loss
    valid = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "valid"]
    assert [r["step"] for r in valid] == list(range(1, 11))    # 10 steps validate every step (MIN_EVALS)
    for r in valid:
        assert r["behavior_error"] == pytest.approx(np.mean([r[f"behavior_error.{t}"] for t in report["targets"]]))
    assert load_checkpoint(run / "best.pt")[1]["step"] == min(valid, key=lambda r: r["behavior_error"])["step"]
    # and best-<variable>.pt the step of that variable's least error
    for t in report["targets"]:
        step = min(valid, key=lambda r: r[f"behavior_error.{t}"])["step"]
        assert load_checkpoint(run / f"best-{t}.pt")[1]["step"] == step
    assert sorted(p.name for p in run.glob("best*.pt")) == sorted(
        ["best.pt"] + [f"best-{t}.pt" for t in report["targets"]])
    cfg, model, dataset, recordings = load_model(run / "best.pt", [tiny_synthetic])
    assert model.targets == ["running.speed", "eye.phi"] and model.inputs == ["eye.theta"]
    # the decoded variables' values in a batch do not change the decoded output
    batch = collate_windows([dataset[DatasetIndex(recordings.recording_ids[0], t, t + 0.1)] for t in (2.0, 3.0)])
    before = model.predict_behavior(batch)
    for name in model.targets:
        batch[f"behavior.{name}"]["value"] = torch.randn_like(batch[f"behavior.{name}"]["value"]) * 100
    after = model.predict_behavior(batch)
    for name in model.targets:
        torch.testing.assert_close(before[name], after[name])


def test_checkpoints_of_one_step_are_decoded_once(joint, tiny_synthetic, tmp_path):
    out, report = joint
    run = tmp_path / "run"
    shutil.copytree(out.with_suffix("") / "joint-f1-s0", run)
    shutil.copy(run / "best.pt", run / "best-zz.pt")                 # same step as best.pt
    steps = {p.name: load_checkpoint(p)[1]["step"] for p in run.glob("best*.pt")}
    data = open_recording(tiny_synthetic)
    samples = decode_samples(data, report["targets"], window_spec(load_checkpoint(run / "best.pt")[0]))
    calls = []
    with mock.patch("neuroformer.decoding.neuroformer_predictions",
                    side_effect=lambda *a, **k: calls.append(a[3]) or np.zeros((len(a[3].times), 2))):
        candidates, _ = checkpoint_candidates(run, tiny_synthetic, samples, report["targets"])
    names = [c[0]["checkpoint"] for c in candidates if set(c[0]) == {"checkpoint"}]
    assert names[0] == "best.pt" and "best-zz.pt" not in names
    assert sorted(steps[n] for n in names) == sorted(set(steps.values()))     # every step once
    assert len(calls) == 2 * len(names) + 2            # valid and test of each, and of the Wiener filter alone


def test_candidates_shrink_the_correction_to_the_wiener_filter_and_average_the_steps(joint, tiny_synthetic):
    out, report = joint
    run, targets = out.with_suffix("") / "joint-f1-s0", report["targets"]
    data = open_recording(tiny_synthetic)
    samples = decode_samples(data, targets, window_spec(load_checkpoint(run / "best.pt")[0]))
    candidates, filter_alone = checkpoint_candidates(run, tiny_synthetic, samples, targets)
    files = [c for c in candidates if set(c[0]) == {"checkpoint"}]
    assert len(files) > 1
    full = {c[0]["checkpoint"]: c[1:] for c in candidates if "correction" not in c[0]}
    # the ensemble: the mean of the files' predictions
    (params, *ensemble), = [c for c in candidates if c[0].get("checkpoint") == "mean" and "correction" not in c[0]]
    assert params["files"] == [c[0]["checkpoint"] for c in files]
    for s in (0, 1):
        np.testing.assert_allclose(ensemble[s], np.mean([c[1 + s] for c in files], 0))
    # the filter alone, as the model with its transformer correction zeroed predicts it
    _, model, dataset, recordings = load_model(run / "best.pt", [tiny_synthetic])
    assert model.wiener_targets == targets
    for readout in model.readout:
        torch.nn.init.zeros_(readout.weight), torch.nn.init.zeros_(readout.bias)
    alone = [neuroformer_predictions(model, dataset, recordings.recording_ids[0], samples[s], targets)
             for s in ("valid", "test")]
    shrunk = [c for c in candidates if "correction" in c[0]]
    assert sorted({c[0]["correction"] for c in shrunk}) == sorted(CORRECTION[1:]) and 0 not in CORRECTION
    assert len(shrunk) == len(full) * (len(CORRECTION) - 1)
    for params, *pred in shrunk:
        weight, base = params["correction"], full[params["checkpoint"]]
        for s in (0, 1):
            np.testing.assert_allclose(pred[s], weight * base[s] + (1 - weight) * alone[s], rtol=1e-5, atol=1e-5)
    assert not np.allclose(alone[1], full["best.pt"][1])          # the correction is not nothing
    # and the filter alone is the report's own row, chosen on validation like every other
    assert filter_alone[0] == {"wiener_filter": "alone"}
    for s in (0, 1):
        np.testing.assert_allclose(filter_alone[1 + s], alone[s], rtol=1e-5, atol=1e-5)
    row = choose([filter_alone], samples["valid"], samples["test"], targets)
    for t in targets:
        got = report["results"][t]["neuroformer, filter alone"]
        assert all(got[k] == v for k, v in row[t].items() if k[0] != "_")


def test_baselines_mode_scores_the_baselines_alone_on_the_same_samples(joint, tiny_synthetic, config_file, tmp_path,
                                                                       capsys):
    _, report = joint
    out = tmp_path / "baselines.json"
    assert main(["decode", "--data", str(tiny_synthetic), "--target", "speed", "--target", "phi", "--mode",
                 "baselines", "--config", str(config_file), "--baselines", "ridge", "-o", str(out)]) == 0
    alone = json.loads(out.read_text())
    assert alone["samples"] == report["samples"] and not out.with_suffix("").exists()     # nothing trained
    check_provenance(out, 0, {"model": CONFIG["model"]})
    for t in report["targets"]:
        assert alone["results"][t] == {"ridge": report["results"][t]["ridge"]}
    assert main(["decode", "--data", str(tiny_synthetic), "--target", "speed", "--mode", "baselines",
                 "--baselines", "", "-o", str(out)]) == 2
    assert "needs at least one baseline" in capsys.readouterr().err


def test_test_scores_are_split_by_seen_and_novel_stimuli(joint, tiny_synthetic):
    data = open_recording(tiny_synthetic)
    test = split_samples(data, ["running.speed"], "test", 0.1, 0.05)
    novel = novel_stimulus(data, test)
    trial = np.searchsorted(np.asarray(data.trials.start), test.times, side="right") - 1
    heldout = TINY["n_movies"]                          # the held-out movie's id: shown on test trials only
    np.testing.assert_array_equal(novel, np.asarray(data.trials.stimulus_id)[trial] == heldout)
    assert 0 < novel.sum() < len(novel)
    assert novel_stimulus(data, Samples(test.times[~novel], test.values[~novel], test.interval[~novel],
                                        test.starts, test.ends)) is None           # nothing novel to split off
    # the scores on each part against a direct computation
    y = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    part = Samples(np.arange(6.0), y, np.zeros(6, int), np.zeros(1), np.ones(1) * 6)
    pred = np.array([0.0, 2.0, 1.0, 5.0, 3.0, 4.5])
    groups = np.array([True, True, True, False, False, False])
    got = by_stimulus({"_test_prediction": pred}, part, 0, groups)
    assert got["test_r_novel_stimuli"] == pytest.approx(np.corrcoef(pred[:3], y[:3, 0])[0, 1])
    assert got["test_r_seen_stimuli"] == pytest.approx(np.corrcoef(pred[3:], y[3:, 0])[0, 1])
    _, report = joint
    assert report["test_samples_of_novel_stimuli"] > 0
    for t in report["targets"]:
        for r in report["results"][t].values():
            assert -1 <= r["test_r_seen_stimuli"] <= 1 and -1 <= r["test_r_novel_stimuli"] <= 1
    assert "novel stimuli" in format_report(report)


def test_probes_never_see_test_data(joint, tiny_synthetic):
    out, _ = joint
    run = out.with_suffix("") / "joint-f1-s0"
    spec = window_spec(load_checkpoint(run / "best.pt")[0])
    data = open_recording(tiny_synthetic)
    targets = ["running.speed", "eye.phi"]
    samples = {s: split_samples(data, targets, s, spec.before, spec.current) for s in SPLITS}
    samples["targets"], samples["classes"] = targets, [0, 0]
    features = probe_features(run, tiny_synthetic, samples, 0, "cpu")
    clean, clean_half = probe_results(features, samples), probe_results(features, samples, 0.5)
    test, train = samples["test"], samples["train"]
    samples["test"] = Samples(test.times, np.full_like(test.values, np.nan), test.interval, test.starts, test.ends)
    hidden = probe_results(probe_features(run, tiny_synthetic, samples, 0, "cpu"), samples)
    # a few-shot probe fits on the first half of the training time only: the rest may be anything
    head = train.in_head(0.5)
    assert 0 < head.sum() < len(head)
    samples["train"] = Samples(train.times, np.where(head[:, None], train.values, np.nan), train.interval,
                               train.starts, train.ends)
    half = probe_results(features, samples, 0.5)
    for row in clean_half:
        for t in targets:
            np.testing.assert_allclose(half[row][t]["_test_prediction"], clean_half[row][t]["_test_prediction"])
    assert list(clean) == ["random init", "history", "+ stimulus", "+ current window", "+ population vector"]
    for row in clean:
        for t in targets:
            a, b = clean[row][t], hidden[row][t]
            assert (a["params"], a["valid_r"], a["smoothing_samples"]) == (b["params"], b["valid_r"],
                                                                           b["smoothing_samples"])
            np.testing.assert_allclose(a["_test_prediction"], b["_test_prediction"])


def test_finetune_and_new_session_weights(tmp_path, config_file):
    paths = write_synthetic(tmp_path / "s.h5", SyntheticConfig(**TINY | {"sessions": 2}))
    cfg = config_from_dict(yaml.safe_load(config_file.read_text()))
    pre = tmp_path / "pre"
    train(cfg, [paths[0]], RunOptions(pre, max_steps=4))
    _, pre_state = load_checkpoint(pre / "best.pt")
    # weights copied by name, unit rows by unit id; the new session's units are appended
    vocab = UnitVocab.from_state_dict(pre_state["vocab"])
    vocab.extend(open_recording(paths[1]).units.id.astype(str))
    model = build(cfg, [paths[1]], vocab)[2]
    load_matching(model, vocab, pre / "best.pt")
    n_old = len(pre_state["vocab"]["words"])
    torch.testing.assert_close(model.unit_emb.weight[:n_old], pre_state["model"]["unit_emb.weight"])
    torch.testing.assert_close(model.decoder[0].cross.q.weight, pre_state["model"]["decoder.0.cross.q.weight"])
    assert len(vocab) > n_old
    # adapting by unit identity alone leaves every other weight as pretrained
    adapted = tmp_path / "adapted"
    train(cfg, [paths[1]], RunOptions(adapted, max_steps=4, init=pre / "best.pt", trainable="units"))
    _, state = load_checkpoint(adapted / "last.pt")
    assert state["vocab"] == vocab.state_dict()
    for name, value in state["model"].items():
        if name.split(".")[0] in ("unit_emb", "unit_head"):
            assert not torch.equal(value[n_old:], model.state_dict()[name][n_old:]) or "bias" in name
        else:
            torch.testing.assert_close(value, pre_state["model"][name], msg=name)


def test_heads_only_training_leaves_the_body_as_initialised(tiny_synthetic, tmp_path):
    cfg = decode_config(config_from_dict(CONFIG), open_recording(tiny_synthetic), ["running.speed"])
    torch.manual_seed(0)
    start = build(cfg, [tiny_synthetic])[2].state_dict()
    train(cfg, [tiny_synthetic], RunOptions(tmp_path / "heads", max_steps=3, trainable="heads"))
    state = load_checkpoint(tmp_path / "heads" / "last.pt")[1]["model"]
    changed = {name.split(".")[0] for name, value in state.items() if not torch.equal(value, start[name])}
    fitted = {"wiener_weight", "wiener_bias", "wiener_own_history"}     # the filter (its inputs' flags where chosen)
    assert changed - {"wiener_innovation"} == {"query", "population_in", "readout"} | fitted
    with pytest.raises(InputError, match="unknown 'body' \\(all, units, heads\\)"):
        train(cfg, [tiny_synthetic], RunOptions(tmp_path / "x", max_steps=1, trainable="body"))


def test_binned_count_recording_with_hand_velocity_and_a_class_label(tmp_path):
    """The original format: counts in 50 ms bins, a continuous hand velocity and an integer
    label (the quadrant of the velocity: classification) to decode."""
    rng = np.random.default_rng(0)
    n_bins = 2400
    vel = np.stack([np.convolve(rng.normal(size=n_bins), np.ones(10) / 3, mode="same") for _ in range(2)], 1)
    quadrant = ((vel[:, 0] > 0) * 2 + (vel[:, 1] > 0)).astype(np.int64)
    tuning = rng.normal(size=(20, 2))
    counts = rng.poisson(0.4 * np.exp(0.6 * tuning @ vel.T)).astype(np.int64)
    src = tmp_path / "arrays.npz"
    np.savez(src, spikes=counts, hand_vel=vel, quadrant=quadrant)
    rec = tmp_path / "rec.h5"
    assert main(["prepare", str(src), "-o", str(rec), "--bin-size", "0.05", "--behavior", "hand_vel=0.05",
                 "--behavior", "quadrant=0.05"]) == 0
    cfg = {k: v for k, v in CONFIG.items() if k != "modalities"} | {
        "window": {"current": 0.05, "history": 0.05, "frames": 0.0, "behavior": 0.05, "dt_res": 0.001}}
    cfg_path = tmp_path / "binned.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "binned.json"
    assert main(["decode", "--data", str(rec), "--target", "hand_vel_0", "--target", "hand_vel_1",
                 "--target", "quadrant", "--config", str(cfg_path), "--baselines", "ridge",
                 "--steps", "10", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    for t in ("hand_vel.hand_vel_0", "hand_vel.hand_vel_1"):
        assert report["results"][t]["ridge"]["test_r"] > 0.6 and "neuroformer" in report["results"][t]
    assert report["samples"]["test"] > 400
    labels = report["results"]["quadrant.quadrant"]
    assert set(labels) == {"neuroformer", "neuroformer, best.pt", "ridge"}
    for cell in labels.values():
        assert {"test_accuracy", "test_balanced_accuracy", "valid_balanced_accuracy"} <= set(cell)
        assert "test_r" not in cell and 0 <= cell["test_balanced_accuracy"] <= 1
    assert labels["ridge"]["test_accuracy"] > labels["ridge"]["majority_class_rate"] + 0.2   # logistic regression
    assert labels["ridge"]["params"]["lags"] in (0, 2, 5, 10)
    cfg, model, _, _ = load_model(out.with_suffix("") / "joint-f1-s0" / "best.pt", [rec])
    assert model.objectives["quadrant.quadrant"] == "classification" and model.readout[-1].out_features == 4


def test_every_baseline_classifies_integer_labels():
    rng = np.random.default_rng(1)
    n = 800
    drive = np.convolve(rng.normal(size=n), np.ones(8) / 3, mode="same")
    label = np.digitize(drive, [-0.5, 0.5])                                    # 3 classes
    counts = rng.poisson(np.exp(0.8 * np.outer(drive, rng.normal(size=12)))).astype(float)
    y = np.c_[drive, label].astype(float)
    train, test = (BinnedSplit([counts[a:b]], np.zeros(b - a, int), np.arange(b - a), y[a:b])
                   for a, b in ((0, 600), (600, n)))
    with mock.patch("neuroformer.decoders.GRU_STEPS", 60):
        for name in ("ridge", "lasso", "glm", "mlp", "gru"):
            accuracy = []
            for params, predict in baseline_grid(name, train, classes=[0, 3]):
                pred = predict(test)
                assert pred.shape == (200, 2) and np.isfinite(pred).all() and set(np.unique(pred[:, 1])) <= {0, 1, 2}
                accuracy.append(np.mean(pred[:, 1] == test.y[:, 1]))
            assert max(accuracy) > np.bincount(label[600:]).max() / 200 + 0.1, name


def test_decode_errors_name_the_problem(tiny_synthetic, tmp_path, capsys):
    out = str(tmp_path / "x.json")
    assert main(["decode", "--data", str(tiny_synthetic), "--target", "pupil", "-o", out]) == 2
    assert "behaviour variable 'pupil': not found" in capsys.readouterr().err
    assert main(["decode", "--data", str(tiny_synthetic), "--target", "speed", "--baselines", "svm", "-o", out]) == 2
    assert "unknown ['svm']" in capsys.readouterr().err
    assert main(["decode", "--data", str(tiny_synthetic), "--target", "speed", "--mode", "probe", "-o", out]) == 2
    assert "--run" in capsys.readouterr().err


def test_decoding_study_quick(tmp_path):
    args = ["--quick", "--few-shot-trainable", "all,heads", "--jobs", "2", "-o", str(tmp_path)]
    subprocess.run([sys.executable, str(STUDY), *args], check=True, capture_output=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["joint"]["running.speed"]) == {"neuroformer", "neuroformer, best.pt", "neuroformer, filter alone",
                                                      "ridge", "gru"}
    assert list(summary["probe"]["eye.phi"]) == ["random init", "history", "+ stimulus", "+ current window",
                                                 "+ population vector"]
    assert set(summary["ceiling"]) == {"running.speed", "eye.phi", "eye.theta"}
    assert summary["ceiling"]["running.speed"]["test_r"] > 0.5          # noise-free rates carry the speed gain
    models = {(r["model"], r["fraction"]) for r in summary["few_shot"]}
    assert {(m, f) for m in ("pretrained", "random init", "pretrained, heads only", "random init, heads only",
                             "pretrained probe", "random init probe") for f in (0.5, 1.0)} <= models
    assert set(summary["new_session"]["mean_test_r"]) == {"units", "all"}
    assert (tmp_path / "few_shot.png").exists() and (tmp_path / "joint.png").exists()
    seconds = summary["seconds"]
    assert set(seconds) == {"joint", "pretrain", "probe", "few_shot", "ceiling", "new_session", "total"}
    assert all(t > 0 for t in seconds.values())
    assert seconds["total"] < sum(seconds.values()) - seconds["total"]     # two runs side by side
    command, model = ["decoding.py", *args], {"model": {"width": 32, "heads": 2}}
    check_provenance(tmp_path / "summary.json", [0], {"quick": True, "jobs": 2}, command)
    check_provenance(tmp_path / "ceiling.json", None, None, command)
    check_provenance(tmp_path / "few_shot" / "probes.json", [0], model, command)
    check_provenance(tmp_path / "joint.json", 0, model, command)           # written by a pool process


def test_decoding_study_rejects_no_jobs(tmp_path):
    run = subprocess.run([sys.executable, str(STUDY), "--jobs", "0", "-o", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and "--jobs: 0 runs side by side (at least 1)" in run.stderr
    assert not any(tmp_path.iterdir())


def test_an_interrupted_pretraining_is_resumed_not_taken_as_done(tmp_path):
    """A study stopped mid-pretraining leaves a best.pt; rerun, it trains on to its steps before
    anything starts from it (the probes and the new session's adaptation)."""
    study = [sys.executable, str(STUDY), "--quick", "--stages", "probe,new_session", "-o", str(tmp_path)]
    subprocess.run([*study, "--steps", "4"], check=True, capture_output=True)          # the stopped study
    for report in ("probe.json", "sessions/adapt-units.json", "sessions/adapt-all.json"):
        (tmp_path / report).unlink()
    for adapted in ("adapt-units", "adapt-all"):
        shutil.rmtree(tmp_path / "sessions" / adapted)
    subprocess.run(study, check=True, capture_output=True)                            # rerun: 10 steps
    for run in ("pretrain", "sessions/pretrain"):
        steps = [json.loads(line)["step"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == 10 and steps.count(4) == 2, run          # trained on from step 4 (train and valid rows)


def _parent(pid):
    """The parent pid of a living process; None once it has ended or is a zombie (Linux /proc)."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return None
    return None if state == "Z" else int(ppid)


def _pool_processes(pid):
    """The living multiprocessing workers that `pid` spawned."""
    pids = (int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit())
    return [c for c in pids if _parent(c) == pid and "spawn_main" in _cmdline(c)]


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_killed_study_leaves_no_run_behind(tmp_path):
    study = subprocess.Popen([sys.executable, str(STUDY), "--quick", "--jobs", "2", "-o", str(tmp_path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline and not (len(workers) == 2 and (tmp_path / "pretrain" / "metrics.jsonl").exists()):
        workers = _pool_processes(study.pid)
        time.sleep(0.1)
    assert len(workers) == 2, "the study's two pool processes never started training"
    study.kill()
    study.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_parent(w) is not None for w in workers):
        time.sleep(0.1)
    assert all(_parent(w) is None for w in workers), "pool processes outlived the killed study"


def test_short_decoding_run_validates_at_least_min_evals_times(tiny_synthetic, tmp_path):
    path = tmp_path / "rare.yaml"
    path.write_text(yaml.safe_dump(CONFIG | {"train": CONFIG["train"] | {"eval_every": 100}}))
    run = train_decoder(tiny_synthetic, ["running.speed"], tmp_path / "w", "joint", config=path,
                        steps=2 * MIN_EVALS + 1)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "valid"] == [*range(2, 2 * MIN_EVALS + 1, 2), 2 * MIN_EVALS + 1]


def test_decode_keeps_a_targets_reads_frames_and_makes_the_others_read_them(tiny_synthetic):
    raw = {**CONFIG, "modalities": {"behavior": {"variables": {"speed": {"predict": True, "reads_frames": False}, "eye.theta": {}}}}}
    cfg = decode_config(config_from_dict(raw), open_recording(tiny_synthetic), ["running.speed", "eye.phi"])
    assert {n: v.reads_frames for n, v in cfg.modalities["decoded"].variables.items()} == \
        {"running.speed": False, "eye.phi": True}
    assert cfg.variables(predict=False) == ["eye.theta"]
    blind = decode_config(config_from_dict(CONFIG), open_recording(tiny_synthetic), ["eye.phi", "eye.theta"],
                          without_movie=["eye.theta"])
    assert [v.reads_frames for v in blind.modalities["decoded"].variables.values()] == [True, False]


@pytest.mark.parametrize("args, problem", [(["--target", "phi", "--without-movie", "speed"],
                                            "['running.speed'] not among the targets ['eye.phi']"),
                                           (["--target", "phi", "--without-movie", "phi", "--mode", "baselines"],
                                            "not mode baselines")])
def test_without_movie_names_targets_of_a_trained_read_out(tiny_synthetic, tmp_path, capsys, args, problem):
    assert main(["decode", "--data", str(tiny_synthetic), *args, "-o", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--without-movie" in err and problem in err
    assert not (tmp_path / "d.json").exists()


def test_frames_are_never_shifted_by_a_decoded_gaze(tiny_synthetic, joint, tmp_path, capsys):
    raw = {**CONFIG, "window": {**CONFIG["window"], "gaze": {"x": "eye.phi", "y": "eye.theta"}}}
    data = open_recording(tiny_synthetic)
    cfg = decode_config(config_from_dict(raw), data, ["eye.phi"])
    assert not cfg.window.gaze.x and not cfg.window.gaze.y                   # joint and finetune: unshifted
    kept = config_from_dict({**CONFIG, "window": {**CONFIG["window"], "gaze": {"x": "eye.phi"}}})
    assert decode_config(kept, data, ["running.speed"]).window.gaze.x == "eye.phi"    # another target keeps it
    run = joint[0].with_suffix("") / "joint-f1-s0"                           # a probe would read the shift
    with mock.patch("neuroformer.decoding.load_checkpoint", return_value=(config_from_dict(raw), {})):
        assert main(["decode", "--data", str(tiny_synthetic), "--target", "phi", "--mode", "probe", "--run", str(run),
                     "-o", str(tmp_path / "probe.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eye.phi: the run's frames are shifted by it" in err
