"""Connectivity: normalisation on a hand-made case, orientation on a planted one-way connection,
attention sums against a loop-by-loop reference, baselines, scoring, circuits, CLI, analysis script."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroformer.checkpoints import load_model
from neuroformer.cli import main
from neuroformer.config import config_from_dict
from neuroformer.connectivity import (
    PairSums,
    attention_connectivity,
    lagged_correlation,
    pearson_connectivity,
    perturbation_connectivity,
    score,
)
from neuroformer.data.circuits import HubCircuitConfig, hub_circuit
from neuroformer.data.objects import Interval
from neuroformer.data.recording import make_recording, open_recording, save_recording
from neuroformer.data.synthetic import write_with_truth
from neuroformer.data.windows import IGNORE, collate_windows
from neuroformer.nn import capture_attention
from neuroformer.training import RunOptions, tiling_batches, train

from conftest import check_provenance

TINY_CFG = {
    "window": {"current": 0.05, "history": 0.05, "frames": 0, "dt_res": 0.001},
    "model": {"width": 32, "heads": 2, "history_layers": 1, "decoder_layers": 1, "dropout": 0.0},
    "loss": {"contrastive": 0.0},
    "train": {"batch_size": 16, "lr": 3e-3, "warmup_steps": 10, "max_steps": 250, "eval_every": 250,
              "eval_batches": 2, "checkpoint_every": 250},
}


def test_pair_sums_normalisation_by_hand():
    # one window, two queries (rows: units 0 and 1), three keys (units 0, 1, and a START-like key)
    weights = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]])
    allowed = torch.tensor([[[True, True, True], [True, True, False]]])
    sums = PairSums(2, 2)
    sums.add(weights, allowed, torch.tensor([[0, 1]]), torch.tensor([[0, 1, -1]]))
    # row 0 sees 3 keys (chance 1/3); row 1 sees 2 keys, its weights renormalised: 0.1/0.7, 0.6/0.7
    expected = np.array([[0.5 / (1 / 3), 0.3 / (1 / 3)], [(0.1 / 0.7) / 0.5, (0.6 / 0.7) / 0.5]])
    np.testing.assert_allclose(sums.normalised(), expected, rtol=1e-6)
    # a pair never seen together stays at chance (1)
    sums = PairSums(3, 3)
    sums.add(weights, allowed, torch.tensor([[0, 1]]), torch.tensor([[0, 1, -1]]))
    assert sums.normalised()[2, 2] == 1.0 and sums.normalised()[0, 2] == 1.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Unit 1 fires 3 ms after every spike of unit 0; units 2, 3 fire independently (20 Hz each)."""
    rng = np.random.default_rng(0)
    duration = 80.0
    a = np.sort(rng.uniform(0, duration - 0.01, int(20 * duration)))
    others = [np.sort(rng.uniform(0, duration, int(20 * duration))) for _ in range(2)]
    times = np.concatenate([a, a + 0.003] + others)
    units = np.concatenate([np.zeros(len(a)), np.ones(len(a)), np.full(len(others[0]), 2), np.full(len(others[1]), 3)])
    order = np.argsort(times, kind="stable")
    path = tmp_path_factory.mktemp("planted") / "planted.h5"
    save_recording(make_recording(
        spike_times=times[order], spike_units=units[order].astype(int), unit_ids=["p/a", "p/b", "p/c", "p/d"],
        domain=(0.0, duration), session_id="p",
        splits=dict(train=Interval(0.0, 60.0), valid=Interval(60.0, 68.0), test=Interval(68.0, duration))), path)
    cfg = config_from_dict(TINY_CFG)
    train(cfg, [path], RunOptions(path.parent / "run", seed=0))
    return path, path.parent / "run"


def test_planted_connection_is_target_row_source_column(planted):
    path, run = planted
    cfg, model, dataset, recordings = load_model(run / "best.pt", [path])
    rid = recordings.recording_ids[0]
    batches = tiling_batches(recordings, dataset.spec, 16, 4, split="test")
    hist = attention_connectivity(model, dataset, rid, batches, combine="grad", progress=False)["history_attention"]
    assert hist[1, 0] > 2 * hist[0, 1] and hist[1, 0] > max(hist[1, 2], hist[1, 3])
    pert = perturbation_connectivity(model, dataset, rid, [batches[0][:4]], progress=False)
    assert pert[1, 0] == pert.max() and pert[1, 0] > 1 and abs(pert[0, 1]) < pert[1, 0] / 10
    data = open_recording(path)
    lagged = lagged_correlation(data, data.test_domain)
    assert lagged[1, 0] > 0.5 and abs(lagged[0, 1]) < 0.05
    pearson = pearson_connectivity(data, data.test_domain)
    np.testing.assert_allclose(pearson, pearson.T)


def test_attention_sums_match_a_loop_reference(planted):
    """Rows are the unit of the next spike (unit_target), columns the attended token's unit."""
    path, run = planted
    cfg, model, dataset, recordings = load_model(run / "best.pt", [path])
    rid = recordings.recording_ids[0]
    idx = tiling_batches(recordings, dataset.spec, 8, 1, split="test")[0]
    got = attention_connectivity(model, dataset, rid, [idx], progress=False)["self_attention"]
    batch = collate_windows([dataset[i] for i in idx])
    with torch.no_grad(), capture_attention() as cap:
        memory, _ = model.encode_context(batch)
        model.decode(batch["current"], memory)
    w = cap["decoder.0.self"][0].mean(1)
    unit_of = {int(t): u for u, t in enumerate(dataset.unit_tokens[rid])}
    weight, chance = np.zeros((4, 4)), np.zeros((4, 4))
    cur = batch["current"]
    for b in range(len(idx)):
        n = int(cur["mask"][b].sum())
        for i in range(n):
            target = int(cur["unit_target"][b, i])
            if target == IGNORE:
                continue
            for k in range(1, i + 1):
                weight[unit_of[target], unit_of[int(cur["unit"][b, k])]] += float(w[b, i, k])
                chance[unit_of[target], unit_of[int(cur["unit"][b, k])]] += 1 / (i + 1)
    expected = np.where(chance > 0, weight / np.maximum(chance, 1e-12), 1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_score_orientation_and_sign():
    w = np.zeros((5, 5))
    w[1, 0], w[3, 2], w[4, 0] = 0.8, -0.5, 0.4
    assert score(w, w, signed=True) == pytest.approx({"r2": 1.0, "spearman": score(w, w, True)["spearman"],
                                                      "auroc": 1.0})
    assert score(w.T, w, signed=True)["auroc"] < 0.7
    assert score(np.abs(w), w, signed=False)["r2"] == pytest.approx(1.0)


def test_hub_circuit_deterministic_with_truth(tmp_path):
    cfg = HubCircuitConfig(n_neurons=20, duration=20.0, seed=4)
    (d1, t1), (d2, t2) = hub_circuit(cfg), hub_circuit(cfg)
    np.testing.assert_array_equal(d1.spikes.timestamps, d2.spikes.timestamps)
    np.testing.assert_array_equal(t1["coupling"], t2["coupling"])
    w = t1["coupling"]
    assert np.all(np.diag(w) == 0) and (w > 0).any() and (w < 0).any()
    assert len(t1["hubs"]) == 5
    delays = t1["delays"][w != 0]
    assert delays.min() >= 0.002 - 1e-9 and delays.max() <= 0.010 + 1e-9
    path = write_with_truth(tmp_path / "hub.h5", d1, t1)
    check_provenance(path.with_suffix(".truth.npz"), 4, {"n_neurons": 20, "duration": 20.0, "seed": 4})


def test_connectivity_cli(planted, tmp_path, capsys):
    path, run = planted
    np.savez(path.with_suffix(".truth.npz"), unit_ids=np.array(["p/a", "p/b", "p/c", "p/d"]),
             coupling=np.array([[0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    out = tmp_path / "conn.npz"
    assert main(["connectivity", "--run", str(run), "--data", str(path), "-o", str(out), "--windows", "32",
                 "--perturbation-windows", "2"]) == 0
    text = capsys.readouterr().out
    assert "lagged_correlation" in text and "perturbation" in text
    with np.load(out) as m:
        assert set(m) >= {"self_attention", "history_attention", "perturbation", "pearson", "unit_ids"}
        assert m["self_attention"].shape == (4, 4)
        assert list(m["unit_ids"]) == ["p/a", "p/b", "p/c", "p/d"]
    assert (tmp_path / "conn_matrices.png").exists()
    check_provenance(out, None, config_from_dict(TINY_CFG))
    assert main(["connectivity", "--run", str(run), "--data", str(path), "-o", str(out), "--split", "nope"]) == 2
    assert "split" in capsys.readouterr().err


def test_hub_circuit_script_quick(tmp_path):
    script = Path(__file__).resolve().parents[1] / "analysis" / "hub_circuit.py"
    config = script.parents[1] / "bench" / "configs" / "likelihood_circuit.yaml"       # point process: + coupling
    args = ["--quick", "-o", tmp_path, "--config", config]
    subprocess.run([sys.executable, str(script), *map(str, args)], check=True, capture_output=True)
    report = json.loads((tmp_path / "table.json").read_text())
    scores = report["per_seed"]["0"]
    assert {"self_attention", "history_attention (grad)", "perturbation", "pearson", "lagged_correlation",
            "glm_coupling", "coupling", "coupling (1-20 ms)", "glm_coupling (1-20 ms)"} <= set(scores)
    assert not any(k.startswith("coupling") and k.endswith("(grad)") for k in scores)
    assert all(0 <= s["r2"] <= 1 and 0 <= s["auroc"] <= 1 for s in scores.values())
    assert (tmp_path / "r2.png").exists() and (tmp_path / "seed0" / "connectivity_matrices.png").exists()
    assert "| pearson |" in (tmp_path / "table.md").read_text()
    check_provenance(tmp_path / "table.json", [0], {"quick": True, "output": str(tmp_path), "config": str(config)},
                     ["hub_circuit.py", *args])
