"""Multichannel input signals (a token per channel and sample) and the periodic-inputs circuit."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroformer.config import config_from_dict
from neuroformer.data.circuits import PeriodicInputsConfig, periodic_inputs
from neuroformer.data.objects import DatasetIndex
from neuroformer.data.recording import spike_counts
from neuroformer.data.synthetic import write_with_truth
from neuroformer.data.windows import collate_windows
from neuroformer.errors import InputError
from neuroformer.model import BEHAVIOR
from neuroformer.assembly import build

from conftest import check_provenance

ROOT = Path(__file__).resolve().parents[1]


def _cfg(channels, **variable):
    return config_from_dict({
        "window": {"current": 0.05, "history": 0.05, "frames": 0, "behavior": 0.1},
        "modalities": {"inputs": {"variables": {"inputs.values": {"channels": channels, **variable}}}},
        "model": {"width": 32, "heads": 2, "behavior_layers": 0, "decoder_layers": 1, "dropout": 0.0},
        "loss": {"contrastive": 0.0},
    })


@pytest.fixture(scope="module")
def periodic_file(tmp_path_factory):
    return write_with_truth(tmp_path_factory.mktemp("periodic") / "p.h5",
                         *periodic_inputs(PeriodicInputsConfig(n_neurons=6, duration=40.0, seed=1)))


def test_periodic_circuit_truth_and_determinism():
    cfg = PeriodicInputsConfig(n_neurons=6, duration=60.0, seed=1)
    (d1, t1), (d2, _) = periodic_inputs(cfg), periodic_inputs(cfg)
    np.testing.assert_array_equal(d1.spikes.timestamps, d2.spikes.timestamps)
    assert sorted(t1["input_of"]) == list(range(6)) and d1.behavior.inputs.values.shape == (1200, 6)
    np.testing.assert_array_equal(t1["mapping"].argmax(1), t1["input_of"])
    # each neuron's 50 ms counts follow its own input more than any other
    counts = spike_counts(d1, 0.0, 60.0, 0.05).astype(float)
    x = np.asarray(d1.behavior.inputs.values)[:len(counts)]
    corr = np.corrcoef(counts.T, x.T)[:6, 6:]
    assert np.all(corr.argmax(1) == t1["input_of"])


def test_one_token_per_channel_and_sample(periodic_file):
    recordings, dataset, model = build(_cfg(6), [periodic_file])
    batch = collate_windows([dataset[dataset_index(recordings, t)] for t in (5.0, 7.3)])
    value = batch["behavior.inputs.values"]["value"]
    assert value.shape == (2, 2, 6)                         # 0.1 s of 20 Hz samples, 6 channels
    memory, _ = model.encode_context(batch)
    n_hist = batch["history"]["unit"].shape[1]
    assert memory[0].shape[1] == n_hist + 2 * 6 + 1          # history, channel tokens, null
    # channel tokens differ by their channel embedding alone when values are equal
    batch["behavior.inputs.values"]["value"] = torch.zeros_like(value)
    tokens = model.encode_context(batch)[0][0][0, n_hist:n_hist + 6]
    i = model.var_index["inputs.values"]
    z = -model.behavior_stats[i, 0] / model.behavior_stats[i, 1]
    shared = model.value_in(z.view(1)) + model.var_emb.weight[i] + model.type_emb.weight[BEHAVIOR]
    assert torch.allclose(tokens, model.behavior_norm(shared + model.channel_emb.weight), atol=1e-5)
    # changing one channel's value changes the unit drives
    model.eval()
    batch["behavior.inputs.values"]["value"][:, :, 3] = 2.0
    drive_a = model.unit_drive(model.encode_context(batch)[0])
    batch["behavior.inputs.values"]["value"][:, :, 3] = -2.0
    assert not torch.allclose(drive_a, model.unit_drive(model.encode_context(batch)[0]))


def dataset_index(recordings, t0):
    return DatasetIndex(recordings.recording_ids[0], t0 - 0.05, t0 + 0.05)


def test_channel_count_and_config_errors(periodic_file):
    with pytest.raises(InputError, match=r"behavior\.inputs\.values.*6 channel\(s\).*channels: 5"):
        build(_cfg(5), [periodic_file])
    with pytest.raises(InputError, match="channels.*inputs only"):
        _cfg(6, predict=True)


def test_periodic_script_quick(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "analysis" / "periodic_inputs.py"), "--quick", "-o", str(tmp_path)],
                   check=True, capture_output=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["neurons"] == 8 and result["accuracy_correlation"] >= 0.75
    assert 0 <= result["accuracy_attention_mean"] <= 1 and 0 <= result["accuracy_attention_grad"] <= 1
    with np.load(tmp_path / "connectivity.npz") as m:
        assert m["input_attention_mean"].shape == (8, 8)
    assert (tmp_path / "input_attention.png").exists()
    command = ["periodic_inputs.py", "--quick", "-o", tmp_path]
    check_provenance(tmp_path / "result.json", 0, {"quick": True, "gain": 2.0}, command)
    check_provenance(tmp_path / "periodic.truth.npz", 0, {"n_neurons": 8, "gain": 2.0}, command)
