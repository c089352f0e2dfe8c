"""Training: checkpoints readable with weights_only, exact resume after SIGKILL, DDP on CPU."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from neuroformer.checkpoints import load_checkpoint, load_model
from neuroformer.config import load_config
from neuroformer.data.windows import collate_windows
from neuroformer.training import RunOptions, tiling_windows, train

from conftest import check_provenance
from test_model import TINY_CFG

STEPS = 40


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    cfg = {**TINY_CFG, "model": {**TINY_CFG["model"], "dropout": 0.1},
           "train": {"batch_size": 8, "max_steps": STEPS, "warmup_steps": 4, "eval_every": 10, "eval_batches": 2,
                     "checkpoint_every": 4}}
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(config, data, out, *extra):
    return [sys.executable, "-m", "neuroformer.cli", "train", "--config", str(config), "--data", str(data),
            "-o", str(out), "--seed", "7", *extra]


def _weights(path):
    return load_checkpoint(path)[1]["model"]


def test_killed_run_resumes_to_the_same_weights(tiny_config, tiny_synthetic, tmp_path):
    subprocess.run(_cmd(tiny_config, tiny_synthetic, tmp_path / "straight"), check=True, capture_output=True)
    proc = subprocess.Popen(_cmd(tiny_config, tiny_synthetic, tmp_path / "killed"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)[1]["step"]
    assert 0 < killed_at < STEPS
    subprocess.run(_cmd(tiny_config, tiny_synthetic, tmp_path / "killed", "--resume"), check=True, capture_output=True)
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, STEPS + 1))
    # the run folder records the latest start: the resuming command, from the step it resumed at
    check_provenance(tmp_path / "killed" / "run.json", 7, {"model": {"dropout": 0.1}, "train": {"max_steps": STEPS}},
                     ["cli.py", *_cmd(tiny_config, tiny_synthetic, tmp_path / "killed", "--resume")[3:]])
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["step"] == killed_at


def test_resume_from_a_checkpoint_without_per_variable_bests_keeps_its_best(tiny_config, tiny_synthetic, tmp_path):
    subprocess.run(_cmd(tiny_config, tiny_synthetic, tmp_path, "--max-steps", "10"), check=True, capture_output=True)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["best_valid"]
    state["best_valid_loss"] = -1.0                    # the older field: no later step can beat it
    torch.save(state, tmp_path / "last.pt")
    subprocess.run(_cmd(tiny_config, tiny_synthetic, tmp_path, "--max-steps", "20", "--resume"), check=True,
                   capture_output=True)
    assert load_checkpoint(tmp_path / "last.pt")[1]["step"] == 20
    assert load_checkpoint(tmp_path / "best.pt")[1]["step"] == 10


def drop_the_filter(state):
    """Make `state` a checkpoint saved before the Wiener filter existed."""
    del state["config"]["model"]["wiener"]
    for name in ("wiener_weight", "wiener_bias", "wiener_innovation", "wiener_own_history"):
        del state["model"][name]


def test_a_run_saved_before_the_wiener_filter_resumes_without_one(tiny_config, tiny_synthetic, tmp_path):
    train(load_config(tiny_config), [tiny_synthetic], RunOptions(tmp_path, max_steps=4))
    assert "eye.phi" in json.loads((tmp_path / "run.json").read_text())["wiener_filter"]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["model"]["wiener_weight"].abs().sum() > 0                  # fitted before the first step
    drop_the_filter(state)
    torch.save(state, tmp_path / "last.pt")
    train(load_config(tiny_config), [tiny_synthetic], RunOptions(tmp_path, max_steps=8, resume=True))
    cfg, state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 8 and cfg.model.wiener is False and "wiener_weight" not in state["model"]


def test_a_filter_saved_before_innovations_loads_as_a_filter_of_counts(tiny_config, tiny_synthetic, tmp_path):
    train(load_config(tiny_config), [tiny_synthetic], RunOptions(tmp_path, max_steps=2))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    fit = json.loads((tmp_path / "run.json").read_text())["wiener_filter"]["eye.phi"]
    assert bool(state["model"]["wiener_innovation"][0]) == (fit["input"] == "innovations")
    renamed = {**state, "model": dict(state["model"])}           # the table's name at ae0b509
    renamed["model"]["own_history_table"] = renamed["model"].pop("wiener_own_history") + 1.0
    torch.save(renamed, tmp_path / "renamed.pt")
    loaded = load_checkpoint(tmp_path / "renamed.pt")[1]["model"]
    torch.testing.assert_close(loaded["wiener_own_history"], state["model"]["wiener_own_history"] + 1.0)
    assert "own_history_table" not in loaded
    del state["model"]["wiener_innovation"], state["model"]["wiener_own_history"]
    torch.save(state, tmp_path / "old.pt")
    _, model, dataset, _ = load_model(tmp_path / "old.pt", [tiny_synthetic])
    batch = collate_windows([dataset[i] for i in tiling_windows(dataset.recordings, dataset.spec, "train")[:4]])
    with torch.no_grad():
        want = model.binned_counts(batch) @ state["model"]["wiener_weight"] + state["model"]["wiener_bias"]
        model.wiener_own_history.fill_(1.0)      # were a flag left on, the innovations would show
        torch.testing.assert_close(model.wiener(batch), want)


def test_finetuning_from_a_checkpoint_without_the_filter_adds_none(tiny_config, tiny_synthetic, tmp_path):
    cfg = load_config(tiny_config)
    train(cfg, [tiny_synthetic], RunOptions(tmp_path / "old", max_steps=2))
    state = torch.load(tmp_path / "old" / "last.pt", weights_only=True)
    drop_the_filter(state)
    torch.save(state, tmp_path / "old.pt")
    for init, fitted in ((tmp_path / "old.pt", False), (tmp_path / "old" / "last.pt", True)):
        out = tmp_path / f"tuned_{fitted}"
        train(cfg, [tiny_synthetic], RunOptions(out, max_steps=1, init=init, trainable="heads"))
        assert bool(load_checkpoint(out / "last.pt")[1]["model"]["wiener_weight"].abs().sum() > 0) is fitted


def test_checkpoint_holds_everything_and_loads_weights_only(tiny_config, tiny_synthetic, tmp_path):
    subprocess.run(_cmd(tiny_config, tiny_synthetic, tmp_path, "--max-steps", "10"), check=True, capture_output=True)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "step", "epoch", "batches_done", "seed", "torch_rng", "config",
            "vocab", "behavior_stats"} <= set(state)
    assert state["step"] == 10 and state["vocab"]["words"][2] == "synthetic/n0000"
    assert (tmp_path / "best.pt").exists()
    valid = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"valid"' in x]
    assert valid and valid[-1]["nll_per_spike"] > 0


def test_resume_with_another_config_is_refused(tiny_config, tiny_synthetic, tmp_path):
    subprocess.run(_cmd(tiny_config, tiny_synthetic, tmp_path, "--max-steps", "4"), check=True, capture_output=True)
    other = tmp_path / "other.yaml"
    raw = yaml.safe_load(tiny_config.read_text())
    raw["model"]["width"] = 32
    other.write_text(yaml.safe_dump(raw))
    proc = subprocess.run(_cmd(other, tiny_synthetic, tmp_path, "--resume"), capture_output=True, text=True)
    assert proc.returncode == 2
    assert ("last.pt: config: the checkpoint was made with another config: model.width (16 in the checkpoint, "
            "32 now)") in proc.stderr


def test_torchrun_two_processes_on_cpu(tiny_config, tiny_synthetic, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "neuroformer.cli", "train",
                    "--config", str(tiny_config), "--data", str(tiny_synthetic), "-o", str(tmp_path),
                    "--max-steps", "6"], check=True, capture_output=True, env=env, timeout=300)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    single = tmp_path / "single"
    subprocess.run(_cmd(tiny_config, tiny_synthetic, single, "--max-steps", "6"), check=True, capture_output=True)
    reference = torch.load(single / "last.pt", weights_only=True)
    assert state["step"] == 6 and set(state) == set(reference)
    assert state["model"].keys() == reference["model"].keys()
