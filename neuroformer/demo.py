"""`neuroformer demo`: the main job on data the package makes itself.

Stages (on 2 CPU cores ~17 min in all, training ~14 of them: BENCHMARKS.md, "The demo"):
1. prepare the synthetic recording and write its overview figure;
2. train `configs/demo.yaml` (the GLM inside the model fitted alone for 3,000 steps, then 600
   steps with the transformer) with validation every 200 steps;
3. score the trained model and the empirical-frequency baseline on the whole validation split
   and write `demo_report.json` and `training.png`;
4. simulate every test trial closed-loop (2 repeats), fit and simulate the Poisson GLM on the same
   trials, and compare both with the recorded held-out trials: `simulation_report.json`
   and its figures;
5. read connectivity out of the model (attention, perturbation) and the correlation baselines on
   the test split and score each against the coupling matrix the recording was generated from:
   `connectivity.npz` and its figures;
6. gather everything into one self-contained page, `report.html`.
With `calcium`, the recording is seen through calcium imaging (`prepare --synthetic --calcium
--events`): its spikes become 30 Hz ΔF/F traces, and every stage runs on the events deconvolved
from them, scored against the true coupling all the same.
"""
import time
from pathlib import Path

from .baselines import frequency_baseline
from .checkpoints import load_model
from .connectivity import extract_connectivity, format_scores
from .evaluate import evaluate_simulation, format_comparison
from .config import load_config
from .data.calcium import SPIKE_AMPLITUDE, CalciumModel
from .data.info import format_summary, summarize
from .data.synthetic import SyntheticConfig, write_synthetic
from .plots import recording_overview, training_curves
from .provenance import write_result
from .report import write_report
from .rollouts import SimulationOptions, simulate
from .simulations import save_simulation
from .training import RunOptions, epoch_batches, evaluate, train, tiling_batches

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def run_demo(out_dir, seed=0, max_steps=None, repeats=2, synthetic=None, calcium=False):
    """All stages on the synthetic recording (`synthetic`: its SyntheticConfig, default the demo's;
    `calcium`: on its deconvolved calcium events)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report, clock = {"stages_s": {}}, time.perf_counter()

    imaging = dict(calcium=CalciumModel(), spike_amplitude=SPIKE_AMPLITUDE) if calcium else {}
    recording = write_synthetic(out_dir / "synthetic.h5", synthetic or SyntheticConfig(seed=seed), **imaging)[0]
    report["recording"] = summarize(recording)
    print(format_summary(report["recording"]))
    recording_overview(recording, out_dir / "overview.png")
    report["stages_s"]["prepare"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cfg = load_config(DEMO_CONFIG)
    run = out_dir / "run"
    train(cfg, [recording], RunOptions(run, max_steps=max_steps, seed=seed, overwrite=True))  # the demo's own run
    report["stages_s"]["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cfg, model, dataset, recordings = load_model(run / "best.pt", [recording])
    valid = tiling_batches(recordings, dataset.spec, cfg.train.batch_size, limit=10**9)
    report["valid"] = {
        "neuroformer": evaluate(model, dataset, valid, "cpu"),
        "empirical frequencies": frequency_baseline(
            dataset, epoch_batches(recordings, dataset.spec, "train", cfg.train.batch_size, seed, 0), valid,
            model.n_dt + 1),
    }
    report["stages_s"]["evaluate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    sim = simulate(run, recording, SimulationOptions(repeats=repeats, seed=seed))
    save_simulation(sim, out_dir / "simulated.h5")
    evaluation = evaluate_simulation(recording, out_dir / "simulated.h5", out_dir / "simulation_report.json",
                                     run=run, baseline="glm", seed=seed)
    report["simulation"] = evaluation["summary"]
    report["stages_s"]["simulate_evaluate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    connectivity = extract_connectivity(run, recording, out_dir / "connectivity.npz", perturbation_windows=16)
    report["connectivity"] = connectivity["scores"]
    report["stages_s"]["connectivity"] = time.perf_counter() - clock
    report["figures"] = [str(out_dir / "overview.png"),
                         str(training_curves(run / "metrics.jsonl", out_dir / "training.png",
                                             baseline=report["valid"]["empirical frequencies"]["nll_per_spike"])),
                         *evaluation["figures"], *connectivity["figures"]]
    report = write_result(out_dir / "demo_report.json", report, cfg, seed)
    for name, m in report["valid"].items():
        extra = f", retrieval top-1 {m['retrieval_top1']:.3f}" if m.get("retrieval_top1") is not None else ""
        print(f"{name:>22}: valid NLL {m['nll_per_spike']:.3f} nats/spike, unit top-1 {m['unit_accuracy']:.3f}{extra}")
    print("closed-loop simulation of the test trials against the recorded ones (simulation_report.json):")
    print(format_comparison(evaluation["summary"]))
    print("connectivity against the true coupling, off-diagonal (connectivity.npz):")
    print(format_scores(connectivity["scores"]))
    print(f"wrote {out_dir / 'demo_report.json'} and figures {', '.join(report['figures'])}")
    print(f"wrote {write_report(out_dir, out_dir / 'report.html')}")
    return report
