"""The command line: prepare --synthetic, info --json, and the demo end to end."""
import json
from pathlib import Path

import numpy as np

from neuroformer.cli import main
from neuroformer.config import load_config
from neuroformer.data.synthetic import SyntheticConfig
from neuroformer.demo import DEMO_CONFIG, run_demo

from conftest import check_provenance


def test_prepare_synthetic_sessions_and_info_json(tmp_path, capsys):
    out = tmp_path / "syn.h5"
    assert main(["prepare", "--synthetic", "-o", str(out), "--neurons", "12", "--trials", "3",
                 "--trial-length", "2", "--sessions", "2", "--seed", "5"]) == 0
    paths = [tmp_path / "syn_s0.h5", tmp_path / "syn_s1.h5"]
    assert all(p.exists() and p.with_suffix(".truth.npz").exists() for p in paths)
    capsys.readouterr()
    assert main(["info", "--json", *map(str, paths)]) == 0
    lines = capsys.readouterr().out
    first = json.loads(lines[:lines.index("}\n{") + 1])
    assert first["units"] == 12 and first["session"] == "synthetic-s0"
    assert sorted(first["behavior"]) == ["eye.phi", "eye.theta", "running.speed"]
    assert set(first["splits"]) == {"train", "valid", "test"}


def test_synthetic_duration_option(tmp_path):
    out = tmp_path / "d.h5"
    assert main(["prepare", "--synthetic", "-o", str(out), "--neurons", "8", "--duration", "120",
                 "--trial-length", "4"]) == 0
    truth = np.load(out.with_suffix(".truth.npz"))
    assert abs(len(truth["true_rate_times"]) / 20.0 - 120) < 6


def test_demo_end_to_end(tmp_path):
    small = SyntheticConfig(n_neurons=40, trial_length=5.0, n_movies=2, n_trials=4, heldout_trials=2)
    report = run_demo(tmp_path, seed=0, max_steps=30, repeats=1, synthetic=small)
    assert report["recording"]["units"] == 40
    valid = report["valid"]
    assert set(valid) == {"neuroformer", "empirical frequencies"}
    assert 0 < valid["neuroformer"]["nll_per_spike"] < 20 and 0 <= valid["neuroformer"]["retrieval_top1"] <= 1
    assert (tmp_path / "overview.png").stat().st_size > 10_000 and (tmp_path / "training.png").exists()
    assert (tmp_path / "run" / "best.pt").exists()
    assert json.loads((tmp_path / "demo_report.json").read_text())["valid"] == valid
    sim = report["simulation"]
    assert set(sim) == {"training_movies", "held_out_movies"}
    assert all(0 < sim[g][m]["rate_ratio"] < 10 for g in sim for m in ("neuroformer", "glm"))
    assert set(report["connectivity"]) >= {"self_attention", "history_attention", "perturbation", "pearson",
                                           "lagged_correlation"}
    assert all(0 <= s["auroc"] <= 1 for s in report["connectivity"].values())
    with np.load(tmp_path / "connectivity.npz") as m:
        assert m["stimulus_attention"].shape[0] == 40 and m["self_attention"].shape == (40, 40)
    assert all(Path(f).exists() for f in report["figures"]) and len(report["figures"]) == 7
    page = (tmp_path / "report.html").read_text()
    assert all(f'<section id="{s}">' in page for s in ("recording", "training", "simulation", "connectivity"))
    # every result records how it was made: the demo config and seed (connectivity draws nothing)
    cfg = load_config(DEMO_CONFIG)
    cfg.train.glm_steps = 15                      # a run cut to 30 steps fits the GLM alone for half of them
    for name, seed in [("demo_report.json", 0), ("simulation_report.json", 0), ("run/run.json", 0),
                       ("simulated.h5", 0), ("connectivity.npz", None)]:
        check_provenance(tmp_path / name, seed, cfg)
    check_provenance(tmp_path / "synthetic.truth.npz", 0, {"n_neurons": 40, "n_trials": 4, "seed": 0})
    assert json.loads((tmp_path / "run" / "run.json").read_text())["options"]["max_steps"] == 30


def test_ci_runs_exactly_the_readme_test_command():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    ci_command = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command.startswith("pip install torch==2.14.1 torchvision==0.29.1")
    assert f"    {ci_command}\n" in readme
    assert "    pip install torch==2.14.1 torchvision==0.29.1 -e . && neuroformer demo\n" in readme


def test_demo_on_calcium_events(tmp_path):
    """`demo --calcium`: every stage on the events deconvolved from the recording's ΔF/F."""
    small = SyntheticConfig(n_neurons=12, trial_length=2.0, n_movies=2, n_trials=3, heldout_trials=1)
    report = run_demo(tmp_path, seed=0, max_steps=4, repeats=1, synthetic=small, calcium=True)
    assert report["recording"]["calcium"]["events"]["spike_amplitude"] == 0.07
    assert report["recording"]["spikes"] > 0 and "glm" in report["simulation"]["training_movies"]
    assert np.load(tmp_path / "synthetic.truth.npz")["spike_times"].size > 0 and "pearson" in report["connectivity"]
    for row in report["simulation"].values():                 # simulated events seen as traces, too
        assert all(-1 <= row[m]["trace_r_median"] <= 1 and 0 <= row[m]["trace_ks_median"] <= 1 for m in ("neuroformer", "glm"))
    assert (tmp_path / "simulation_report_traces.png").exists()
