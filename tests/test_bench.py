"""The benchmarks' quick modes run end to end and report sane figures, with their provenance."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import check_provenance

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_windows.py"


def test_bench_windows_quick(tmp_path):
    out = tmp_path / "windows.json"
    args = ["--quick", "--workdir", tmp_path, "--out", out]
    _run("bench/bench_windows.py", *args)
    check_provenance(out, 0, {"quick": True}, ["bench_windows.py", *args])
    report = json.loads(out.read_text())
    short, long = report["rows"]
    assert short["windows"] == long["windows"] == 100
    assert 1.7 < long["recording_s"] / short["recording_s"] < 2.3 and long["spikes"] > 1.5 * short["spikes"]
    assert short["windows_per_s"] > 10 and short["frames_per_window"] == 20
    assert out.with_suffix(".png").exists()


def _run(script, *args):
    return subprocess.run([sys.executable, str(SCRIPT.parents[1] / script), *map(str, args)],
                          check=True, capture_output=True, text=True)


def test_ablation_quick(tmp_path):
    out = tmp_path / "ablation.json"
    args = ["--quick", "--workdir", tmp_path, "--out", out]
    _run("bench/ablation.py", *args)
    check_provenance(out, 0, {"quick": True, "seed": 0}, ["ablation.py", *args])
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["history only", "+ stimulus", "+ behaviour", "empirical frequencies"]
    assert all(0 < r["nll_per_spike"] < 20 for r in rows.values())
    assert rows["history only"].get("retrieval_top1") is None and rows["+ stimulus"]["retrieval_top1"] is not None


def test_bench_train_quick(tmp_path):
    out = tmp_path / "train.json"
    args = ["--quick", "--workdir", tmp_path, "--out", out]
    _run("bench/bench_train.py", *args)
    check_provenance(out, 0, {"quick": True}, ["bench_train.py", *args])
    result = json.loads(out.read_text())
    demo, published = result["rows"]
    assert [(r["processes"], r["threads_each"]) for r in result["threads"]] == [(1, 1), (1, 2), (2, 1)]
    assert result["threads"][2]["steps_per_s"] == pytest.approx(2 / result["threads"][2]["seconds_per_step"])
    assert (published["width"], published["heads"], published["layers_per_stack"]) == (256, 8, 6)
    assert published["parameters"] > 10 * demo["parameters"] and demo["seconds_per_step"] > 0
    assert published["visual_tokens_per_sample"] > 0


def test_stimulus_feature_script_quick(tmp_path):
    proc = _run("stimuli/extract_features.py", "--quick", "--backbone", "resnet18", "-o", tmp_path)
    assert "features (80, 112, 128)" in proc.stdout
    assert (tmp_path / "quick.resnet18.features.h5").exists() and (tmp_path / "features_resnet18.png").exists()


def test_alternate_generate_times_both_checkouts_in_turn(tmp_path):
    root, out = SCRIPT.parents[1], tmp_path / "ab.json"
    args = ["--quick", "--trees", f"{root},{root}", "--trials", "2", "--workdir", tmp_path, "-o", out]
    _run("bench/alternate_generate.py", *args)
    record = check_provenance(out, 0, {"quick": True, "config": str(root / "configs" / "small.yaml"), "trials": 2},
                              ["alternate_generate.py", *args])
    result = json.loads(out.read_text())
    before, after = result["runs"]["before"], result["runs"]["after"]
    assert len(before) == len(after) == 1 and before[0]["spikes"] == after[0]["spikes"] > 0 and result["same_spike_counts"]
    assert (before[0]["trials"], before[0]["repeats"], before[0]["simulated_s"]) == (2, 2, pytest.approx(0.8))
    assert result["after_over_before"] == pytest.approx(after[0]["wall_s"] / before[0]["wall_s"])
    assert result["trees"]["before"]["commit"] == result["trees"]["after"]["commit"] == record["commit"]
    _run("bench/alternate_generate.py", "--quick", "--trees", root, "--batches", "1,2", "--repeats", "2",
         "--workdir", tmp_path, "-o", out)                  # one checkout at two batch sizes: the same spikes
    result = json.loads(out.read_text())
    assert list(result["runs"]) == ["batch 1", "batch 2"] and result["same_spike_counts"]
    assert [r[0]["batch"] for r in result["runs"].values()] == [1, 2] and result["over_first"]["batch 1"] == 1.0
    for wrong, problem in ((["--trees", str(root)], "--trees: two checkouts"), (["--trees", ","], "--trees: two checkouts"),
                           (["--seconds", "nan"], "--seconds: must be a positive number"),
                           (["--trials", "0"], "--trials: must be a positive"),
                           (["--config", "nope.yaml"], "--config: 'nope.yaml' is not a config"),
                           (["--batches", "16"], "--batches: must be two or more"),
                           (["--batches", "16,64"], "--trees: one checkout"),
                           (["--trees", str(root), "--batches", "1,2", "--config", "glm"], "--batches: the GLM"),
                           (["-o", tmp_path], "is a folder")):
        bad = subprocess.run([sys.executable, str(root / "bench/alternate_generate.py"), "--trees", f"{root},{root}",
                              "-o", out, *wrong], capture_output=True, text=True)
        assert bad.returncode == 2 and problem in bad.stderr and "Traceback" not in bad.stderr, (wrong, bad.stderr)


def test_bench_generate_quick(tmp_path):
    out = tmp_path / "generate.json"
    args = ["--quick", "--workdir", tmp_path, "--out", out]
    _run("bench/bench_generate.py", *args)
    check_provenance(out, 0, {"quick": True}, ["bench_generate.py", *args])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["mode"], r["batch"]) for r in rows] == [
        ("small.yaml", "cached", 1), ("small.yaml", "naive", 1), ("small.yaml", "cached", 2), ("demo.yaml", "cached", 2),
        ("glm", "closed loop", 2)]
    assert rows[-1]["fit_s"] > 0
    assert all(r["spikes"] > 0 and r["ms_per_spike"] > 0 for r in rows)
    # models set to the recording's rates fire at about them
    assert all(0.3 < r["generated_rate_hz"] / r["recorded_rate_hz"] < 3 for r in rows)


@pytest.mark.skipif(not __import__("torch").backends.mkldnn.is_available(), reason="no oneDNN in this build of torch")
def test_products_compares_both_libraries_on_the_same_arithmetic(tmp_path):
    out = tmp_path / "products.json"
    args = ["--quick", "-o", out]
    _run("bench/products.py", *args)
    check_provenance(out, 0, {"quick": True}, ["products.py", *args])
    table = json.loads(out.read_text())["us_per_product"]
    assert set(table) == {"qkv", "up+gelu", "down+residual", "square+residual"}
    for by_rows in table.values():
        assert set(by_rows) == {"1", "2"}
        assert all(t["mkl"] > 0 and t["onednn"] > 0 and t["max_abs_difference"] < 1e-4 for t in by_rows.values())
    bad = subprocess.run([sys.executable, str(SCRIPT.parent / "products.py"), "--rows", "2,0", "-o", tmp_path / "x.json"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--rows" in bad.stderr and "Traceback" not in bad.stderr


def test_long_trials_quick(tmp_path):
    _run("simulate/long_trials.py", "--quick", "-o", tmp_path)
    check_provenance(tmp_path / "report.json", 0, {"quick": True, "seed": 0},
                     ["long_trials.py", "--quick", "-o", tmp_path])
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["summary"]) == {"training_movies", "held_out_movies"}
    assert report["rows"]["held_out_movies"]["neuroformer"]["scored_spikes"] > 0
    assert (tmp_path / "simulated.nwb").exists() and (tmp_path / "report_psth.png").exists()


def test_bench_connectivity_quick(tmp_path):
    out = tmp_path / "connectivity.json"
    args = ["--quick", "--workdir", tmp_path, "--out", out]
    _run("bench/bench_connectivity.py", *args)
    check_provenance(out, 0, {"quick": True}, ["bench_connectivity.py", *args])
    report = json.loads(out.read_text())
    assert report["neurons"] == 50 and report["spikes"] > 1000
    assert set(report["rows"]) == {"attention (mean)", "attention (grad)", "perturbation", "pearson (10 ms)",
                                   "lagged correlation (1 ms, 1-5 ms)"}
    assert all(r["seconds"] > 0 for r in report["rows"].values())


def _speed_ceiling():
    import importlib.util
    spec = importlib.util.spec_from_file_location("speed_ceiling", SCRIPT.parent / "speed_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_posterior_against_the_prior_and_a_sharp_likelihood():
    from scipy.integrate import quad
    from scipy.stats import norm
    ceiling = _speed_ceiling()
    # no evidence: every bin's posterior mean is the prior mean of 8 softplus(2x), x ~ N(0, 1)
    prior_mean = quad(lambda x: ceiling.speed_of(x) * norm.pdf(x), -10, 10)[0]
    flat = ceiling.posterior_speed(np.zeros((30, len(ceiling.GRID))), 0.05)
    np.testing.assert_allclose(flat, prior_mean, rtol=0.01)
    # decisive evidence for a grid point that moves one step per bin: each bin's own point's speed
    j = 60 + np.arange(30)
    sharp = np.where(np.arange(len(ceiling.GRID))[None] == j[:, None], 0.0, -1e3)
    np.testing.assert_allclose(ceiling.posterior_speed(sharp, 0.05), ceiling.speed_of(ceiling.GRID[j]), rtol=1e-6)
    # a window of (6, 5) bins, k-6 .. k+4: decisive evidence at bin 0 moves bins 0-6, not bin 7 on
    # (the whole trial's posterior carries it on through the prior's 3 s time constant)
    first = np.zeros((30, len(ceiling.GRID)))
    first[0] = np.where(np.arange(len(ceiling.GRID)) == 140, 0.0, -1e3)
    local, whole = ceiling.posterior_speed(first, 0.05, (6, 5)), ceiling.posterior_speed(first, 0.05)
    np.testing.assert_allclose(local[7:], prior_mean, rtol=0.01)
    assert (local[:7] > 1.5 * prior_mean).all() and (whole[7:12] > 1.5 * prior_mean).all()
    np.testing.assert_allclose(ceiling.posterior_speed(sharp, 0.05, (6, 5)), ceiling.speed_of(ceiling.GRID[j]), rtol=1e-6)


def test_speed_ceiling_quick(tmp_path):
    out = tmp_path / "ceiling.json"
    args = ["--quick", "--workdir", tmp_path, "-o", out]
    _run("bench/speed_ceiling.py", *args)
    check_provenance(out, None, {"quick": True, "window": False}, ["speed_ceiling.py", *args])
    report = json.loads(out.read_text())
    assert list(report) == ["generator", "movie average", "counts only", "provenance"]
    del report["provenance"]
    test = {name: r["test"] for name, r in report.items()}
    assert test["generator"]["r"] > 0.8 and test["generator"]["r"] > test["counts only"]["r"]
    assert set(test["generator"]) >= {"r", "r2", "samples", "r_seen_movies", "r_novel_movies"}
    assert len({t["samples"] for t in test.values()}) == 1 and out.with_suffix(".png").exists()
    assert test["generator"]["evidence"] == "whole trial"
    # --window: each sample from its model window's bins (configs/decoding.yaml: 0.3 s before, 0.25 s after)
    _run("bench/speed_ceiling.py", "--data", tmp_path / "ceiling_quick.h5", "--window", "-o", out)
    local = json.loads(out.read_text())["generator"]["test"]
    assert local["evidence"] == "bins k-6 .. k+4 of sample k" and local["samples"] == test["generator"]["samples"]
    assert local["r"] != test["generator"]["r"]


def test_probe_inputs_classifies_each_ending():
    sys.path.insert(0, str(SCRIPT.parent))
    from probe_inputs import classify

    assert classify(2, "error: x.h5: -o: is a folder\n", "error", True, False) == "clear error"
    assert classify(2, "usage: neuroformer ...\nneuroformer: error: --trials: bad\n", "error", True, False) \
        == "long error"
    assert classify(1, "Traceback (most recent call last):\n", "error", True, False) == "traceback"
    assert classify(0, "", "error", True, False) == "silent acceptance"
    assert classify(0, "", "ok", True, False) == "sane"
    assert classify(2, "error: x: y: z\n", "error", False, False) == "silent acceptance"   # an input changed
    assert classify(2, "error: x: y: z\n", "error", True, True) == "silent acceptance"    # a pickle's code ran
    assert classify(None, "", "error", True, False) == "timeout"


@pytest.mark.parametrize("kind", ["synthetic", "hub"])
def test_likelihood_ceiling_probabilities_are_calibrated_on_the_generators_own_spikes(tiny_synthetic, tmp_path, kind):
    """The generator's spike probability rebuilt from the truth file predicts the recorded spikes:
    as many as expected overall and where the stimulus or coupling drive is strongest (a shifted
    frame, delay or gain would break it); the ceiling beats the homogeneous null."""
    sys.path.insert(0, str(SCRIPT.parent))
    from likelihood_ceiling import ceiling, coupling_input, step_probabilities
    from neuroformer.data.circuits import HubCircuitConfig
    from neuroformer.data.recording import open_recording, spike_counts
    from neuroformer.data.synthetic import STEP, write_with_truth

    if kind == "hub":
        from neuroformer.data.circuits import hub_circuit
        path = write_with_truth(tmp_path / "hub.h5", *hub_circuit(HubCircuitConfig(n_neurons=30, duration=120.0)))
        spans = [(10.0, 110.0)]
    else:
        path = tiny_synthetic
        data = open_recording(path)
        spans = list(zip(np.asarray(data.trials.start), np.asarray(data.trials.end)))
    data, truth = open_recording(path), dict(np.load(Path(path).with_suffix(".truth.npz")))
    p = np.concatenate([step_probabilities(data, truth, a, b) for a, b in spans])
    n = np.concatenate([spike_counts(data, a, b, STEP)[:int(round((b - a) / STEP))] for a, b in spans])
    assert p.shape == n.shape
    expected, seen = p.sum(), n.sum()
    assert abs(seen - expected) < 4 * np.sqrt(expected)
    top = p > np.quantile(p, 0.99)                       # the most driven 1% of unit-steps
    assert abs(n[top].sum() - p[top].sum()) < 4 * np.sqrt(p[top].sum()) and p[top].mean() > 2 * p.mean()
    if kind == "hub":
        c = np.concatenate([coupling_input(data, truth, a, b) for a, b in spans])
        assert c.max() > 0.5                             # coupling is exercised
    rows = ceiling(path)
    assert all(r["bits_per_spike"] > 0 for r in rows.values())


def test_the_rebuilt_stimulus_drive_gives_the_generators_own_gain(tiny_synthetic):
    """The drive rebuilt from movies, gaze and fields, standardised per movie as the generator
    does, is the stimulus gain inside the truth's rates; the other normalisations differ from it."""
    sys.path.insert(0, str(SCRIPT.parent))
    from likelihood_ceiling import stimulus_gains
    from neuroformer.data.recording import open_recording

    data, truth = open_recording(tiny_synthetic), dict(np.load(Path(tiny_synthetic).with_suffix(".truth.npz")))
    gains = stimulus_gains(data, truth)
    other = truth["true_rate"] / (truth["target_rate"] * gains["generator"])      # the running gain alone
    speed = np.asarray(data.behavior.running.speed)
    sample = np.minimum((truth["true_rate_times"] * float(data.behavior.running.sampling_rate)).astype(int), len(speed) - 1)
    running = 1 + truth["speed_gain"] * speed[sample][:, None] / 20.0
    np.testing.assert_allclose(other / other.mean(0), running / running.mean(0), rtol=1e-4)
    assert not np.allclose(gains["pooled"], gains["generator"]) and not np.allclose(gains["running"], gains["generator"])


def test_likelihood_bench_trains_the_config_it_is_given(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from _common import config_file

    source = tmp_path / "mine.yaml"
    source.write_text("model: {point_process: true}\ntrain: {max_steps: 9, glm_steps: 4}\n")
    written = yaml.safe_load(config_file(source, tmp_path / "hub.yaml", 10).read_text())
    assert written == {"model": {"point_process": True}, "train": {"max_steps": 10, "glm_steps": 4,
                                                                  "eval_every": 2, "checkpoint_every": 2}}
    assert yaml.safe_load(config_file(source, tmp_path / "short.yaml", 3).read_text())["train"]["glm_steps"] == 2
    assert yaml.safe_load(config_file(source, tmp_path / "same.yaml").read_text()) == yaml.safe_load(source.read_text())
    from neuroformer.config import load_config
    for path in sorted((SCRIPT.parent / "configs").glob("*.yaml")):           # the benchmarks' own configs load,
        assert load_config(path).model.point_process == path.name.startswith("likelihood")   # the likelihood ones point processes
    bad = subprocess.run([sys.executable, str(SCRIPT.parent / "likelihood.py"), "-o", str(tmp_path), "--config",
                          "retina=x.yaml"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--config: NAME=PATH with NAME one of synthetic, hub, calcium" in bad.stderr


def test_probe_inputs_report_records_its_provenance(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from probe_inputs import main

    out, commit = tmp_path / "probe.json", "0123456789abcdef0123456789abcdef01234567"
    main(["--only", "no such case", "--work", str(tmp_path / "work"), "--out", str(out), "--commit", commit])
    assert json.loads(out.read_text())["cases"] == 0 and not (tmp_path / "work").exists()    # no case, no fixture
    assert check_provenance(out, None, {"only": "no such case"})["commit"] == commit


def test_decoding_context_records_its_provenance(tiny_synthetic, tmp_path):
    args = ["--data", tiny_synthetic, "-o", tmp_path / "context.json"]
    _run("bench/decoding_context.py", *args)
    results = json.loads((tmp_path / "context.json").read_text())["results"]
    assert [(r["context"], r["model"]) for r in results] == [(c, m) for c in ("causal", "centred")
                                                             for m in ("ridge", "mlp")]
    check_provenance(tmp_path / "context.json", 0, {"data": str(tiny_synthetic)}, ["decoding_context.py", *args])


SCRIPTS = sorted(p.relative_to(SCRIPT.parents[1]).as_posix() for folder in ("bench", "analysis", "simulate", "stimuli")
                 for p in (SCRIPT.parents[1] / folder).glob("[!_]*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_writes_json_only_with_its_provenance(script):
    """The scripts whose quick modes are too slow for the suite (bench_context, likelihood) are held
    to this too: every JSON file goes through write_result, or carries provenance() itself."""
    source = (SCRIPT.parents[1] / script).read_text()
    assert "json.dump(" not in source and "write_text(json.dumps" not in source, script
    if "atomic_write_json" in source:
        assert "provenance(" in source, script
    assert "write_result(" in source or "provenance(" in source or ".json" not in source, script


def _report(values):
    """A decode report with these test r per model (seen/novel the same)."""
    return {"results": {"running.speed": {m: {"test_r": r, "test_r_seen_stimuli": r, "test_r_novel_stimuli": r}
                                          for m, r in values.items()}}}


def test_joint_decoding_averages_seeds_and_names_the_best_baseline():
    sys.path.insert(0, str(SCRIPT.parent))
    from joint_decoding import summarise

    row = summarise([_report({"neuroformer": 0.8, "ridge": 0.7, "mlp": 0.9}),
                     _report({"neuroformer": 0.9, "ridge": 0.7, "mlp": 0.7})])["running.speed"]
    assert row["models"]["neuroformer"]["test_r"] == {"per_seed": [0.8, 0.9], "mean": pytest.approx(0.85),
                                                      "sd": pytest.approx(0.05)}
    assert row["best_baseline"] == "mlp" and row["reached"]                          # 0.85 >= 0.8
    row = summarise([_report({"neuroformer": 0.6, "ridge": 0.7})])["running.speed"]
    assert row["best_baseline"] == "ridge" and not row["reached"]


def test_closed_loop_quick_runs_resumes_and_records_its_provenance(tmp_path):
    args = ["--quick", "-o", tmp_path, "--seeds", "0"]
    _run("bench/closed_loop.py", *args)
    out, report = tmp_path / "closed_loop.json", tmp_path / "eval_s0" / "report.json"
    check_provenance(out, [0], {"quick": True}, ["closed_loop.py", *args])
    result, seed0 = json.loads(out.read_text()), json.loads(report.read_text())
    for row in ("training_movies", "held_out_movies"):
        for model in ("neuroformer", "glm"):
            figure = result["table"][row][model]["psth_r_median"]
            assert figure["per_seed"] == [seed0["rows"][row][model]["psth_r_median"]] == [figure["mean"]]
    assert result["model_config"]["model"]["point_process"] and result["steps"] == 3
    made = report.stat().st_mtime_ns
    _run("bench/closed_loop.py", *args)                                 # a second run reuses every step
    assert report.stat().st_mtime_ns == made


@pytest.mark.parametrize("recording, variables, tokens", [
    ("synthetic", {"running.speed", "eye.phi", "eye.theta"}, []),
    ("calcium", {"running.speed", "eye.phi", "eye.theta"}, ["--calcium-tokens", "0.2"]),      # route b
    ("velocity", {"hand_vx.hand_vx", "hand_vy.hand_vy"}, [])])
def test_joint_decoding_quick_runs_and_records_its_provenance(tmp_path, recording, variables, tokens):
    args = ["--quick", "-o", tmp_path, "--seeds", "0", "--recording", recording, *tokens]
    _run("bench/joint_decoding.py", *args)
    result = json.loads((tmp_path / "joint_decoding.json").read_text())
    check_provenance(tmp_path / "joint_decoding.json", [0], {"quick": True, "recording": recording},
                     ["joint_decoding.py", *args])
    report = json.loads((tmp_path / "joint_s0.json").read_text())
    seed0 = report["results"]
    assert report["provenance"]["config"]["window"]["calcium"] == (0.2 if tokens else 0.0)
    reads = {n: v["reads_frames"] for n, v in report["provenance"]["config"]["modalities"]["decoded"]["variables"].items()}
    assert reads == {v: v != "running.speed" for v in variables}       # speed read out without the movie
    assert report["baseline_input"] == ("calcium" if recording == "calcium" else "counts")
    assert set(result["table"]) == variables and result["recording"] == recording
    for variable, row in result["table"].items():
        assert set(row["models"]) == {"neuroformer", "neuroformer, best.pt", "neuroformer, filter alone", "ridge"}
        assert row["models"]["ridge"]["test_r"]["mean"] == seed0[variable]["ridge"]["test_r"]
        assert row["best_baseline"] == "ridge"
    if recording == "velocity":                  # the filter at every penalty, from this run
        check_filter_penalties(tmp_path, seed0)


def check_filter_penalties(workdir, seed0):
    """bench/filter_penalties.py on a joint run: the row at the run's own penalty and input is the
    report's filter alone, and the fit's loss is least there; without the run (--targets), the
    filter of an untrained model is the run's; a run without best.pt is refused."""
    from neuroformer.wiener import ALPHAS
    run, out = workdir / "joint_s0" / "joint-f1-s0", workdir / "penalties.json"
    args = ["--run", run, "--data", workdir / "recording.h5", "-o", out]
    _run("bench/filter_penalties.py", *args)
    check_provenance(out, None, {"run": str(run)}, ["filter_penalties.py", *args])
    table, fitted = json.loads(out.read_text())["targets"], json.loads((run / "run.json").read_text())["wiener_filter"]
    assert set(table) == set(fitted)
    for name, entry in table.items():
        assert entry["input"] == fitted[name]["input"] and [r["penalty"] for r in entry["rows"]] == list(ALPHAS)
        own = ALPHAS.tolist().index(fitted[name]["penalty"])
        assert entry["rows"][own]["test_r"] == pytest.approx(seed0[name]["neuroformer, filter alone"]["test_r"], abs=1e-9)
        assert min(r["fit_loss"] for r in entry["rows"]) == entry["rows"][own]["fit_loss"]
    _run("bench/filter_penalties.py", "--targets", ",".join(table), "--data", workdir / "recording.h5", "-o", out)
    untrained = json.loads(out.read_text())["targets"]
    for name, entry in untrained.items():
        assert entry["input"] == fitted[name]["input"] and entry["fit_choice"] == fitted[name]["penalty"]
        for row, same in zip(entry["rows"], table[name]["rows"]):
            assert row == pytest.approx(same, abs=1e-9)
    bad = subprocess.run([sys.executable, str(SCRIPT.parents[1] / "bench" / "filter_penalties.py"), "--run", str(workdir),
                          "--data", str(workdir / "recording.h5"), "-o", str(workdir / "x.json")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_velocity_population_is_cosine_tuned_with_its_lead_and_imports(tmp_path):
    out = tmp_path / "vel.npz"
    args = ["-o", out, "--units", "12", "--minutes", "2", "--rate", "20", "--gain", "1"]
    _run("simulate/velocity_population.py", *args)
    arrays, truth = np.load(out), np.load(tmp_path / "vel.truth.npz")
    counts, v = arrays["spikes"], np.stack([arrays["hand_vx"], arrays["hand_vy"]], 1)
    assert counts.shape == (12, 2400) and v.shape == (2400, 2)
    assert 10 < counts.sum(1).mean() / 120 < 30                              # Hz, near --rate
    for i in range(12):                      # each unit follows its preferred direction, lead bins ahead
        lead = int(truth["lead_bins"][i])
        drive = v[lead:] @ truth["direction"][i]
        assert np.corrcoef(counts[i, :len(drive)], drive)[0, 1] > 0.15
    assert json.loads(str(truth["provenance"]))["config"]["units"] == 12
    bad = subprocess.run([sys.executable, str(SCRIPT.parents[1] / "simulate" / "velocity_population.py"),
                          "-o", str(tmp_path / "x.npz"), "--rate", "nan"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--rate: must be a positive number, got 'nan'" in bad.stderr
    from neuroformer.cli import main
    assert main(["prepare", str(out), "--bin-size", "0.05", "--behavior", "hand_vx=0.05", "--behavior", "hand_vy=0.05",
                 "-o", str(tmp_path / "vel.h5")]) == 0


def test_velocity_population_of_integrate_and_fire_neurons_is_tuned_and_regular(tmp_path):
    tuned = tmp_path / "tuned.npz"
    _run("simulate/velocity_population.py", "-o", tuned, "--neurons", "lif", "--units", "12", "--minutes", "1",
         "--rate", "20", "--gain", "1")
    arrays, truth = np.load(tuned), np.load(tmp_path / "tuned.truth.npz")
    counts, v = arrays["spikes"], np.stack([arrays["hand_vx"], arrays["hand_vy"]], 1)
    assert counts.shape == (12, 1200) and "history" not in truth and float(truth["adaptation_tau"]) == 0.2
    assert 10 < counts.sum(1).mean() / 60 < 30                               # Hz: the input was calibrated to --rate
    for i in range(12):
        lead = int(truth["lead_bins"][i])
        drive = v[lead:] @ truth["direction"][i]
        assert np.corrcoef(counts[i, :len(drive)], drive)[0, 1] > 0.15
    # nearly untuned: adapting integrate-and-fire units fire more regularly than Poisson (Fano
    # factor of their counts < 1), the GLM population's history terms make it burstier (> 1)
    fano = {}
    for neurons in ("lif", "glm"):
        _run("simulate/velocity_population.py", "-o", tmp_path / f"{neurons}.npz", "--neurons", neurons,
             "--units", "12", "--minutes", "1", "--rate", "20", "--gain", "0.01")
        c = np.load(tmp_path / f"{neurons}.npz")["spikes"]
        fano[neurons] = c.var(1) / c.mean(1)
    assert (fano["lif"] < 0.8).all() and (fano["glm"] > 1.0).all()


def test_profile_generate_splits_the_timed_rollout_into_its_parts(tmp_path):
    out = tmp_path / "profile.json"
    args = ["--quick", "--workdir", tmp_path, "--batch", "2", "-o", out]
    _run("bench/profile_generate.py", *args)
    check_provenance(out, 0, {"quick": True, "batch": 2}, ["profile_generate.py", *args])
    result = json.loads(out.read_text())
    parts = result["parts"]
    assert set(parts) == {"window data", "context", "decoder", "heads", "sampling", "bookkeeping"}
    assert abs(sum(p["share"] for p in parts.values()) - 1) < 1e-6 and parts["decoder"]["share"] > 0.05
    assert abs(sum(p["ms_per_spike"] for p in parts.values()) - result["ms_per_spike"]) < 1e-6 * result["ms_per_spike"]
    assert result["decoder_steps"] >= result["spikes"] / 2 and result["decoder_matmul_floor_ms_per_step"] > 0
    assert result["decoder_matmul_own_layout_ms_per_step"] > 0
    assert result["attention_floor_ms_per_step"] > 0 and result["context_ms"] > 0 and result["context_gflop"] > 0
    floor = (result["decoder_steps"] * (result["decoder_matmul_floor_ms_per_step"] + result["attention_floor_ms_per_step"])
             + 2 * 4 * result["context_ms"] + 4 * result["stimulus_ms"]) / 1000      # 0.2 s: 4 windows of 2 rows
    assert result["rollout_floor_s"] == pytest.approx(floor)


def test_compile_decoders_static_capacity_step_is_the_cached_decoder_step(tmp_path):
    out = tmp_path / "compile.json"
    args = ["--quick", "-o", out]
    _run("bench/compile_decoder.py", *args)
    check_provenance(out, 0, {"quick": True}, ["compile_decoder.py", *args])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["batch"] == 2 and row["tokens"] == 8 and row["static_deviation"] < 1e-5
    assert row["eager_ms_per_step"] > 0 and row["static_ms_per_step"] > 0 and "compiled_ms_per_step" not in row
