"""Hub-circuit connectivity: how well does each measure recover a known weight matrix?

For each seed: simulate the hub circuit (`neuroformer prepare --circuit hub`), train the
spikes-only model (configs/circuit.yaml, or `--config`) on its training split, read out attention
(mean over heads and layers, and gradient-weighted), the perturbation measure and, for a
point-process model, its own coupling filters (integrated over all their lags, and over 1-20 ms,
the lagged correlation's window) on the test split, compute
Pearson correlation (10 ms bins) and lagged cross-correlation (1-5 ms as specified, and 1-20 ms,
which covers the true delays of 2-10 ms and the 5 ms kernel) on the same test split,
fit the Poisson GLM on the training split (its coupling read both ways too), and score every matrix against the true W
(off-diagonal R², Spearman, AUROC; see neuroformer/connectivity.py).

    python analysis/hub_circuit.py -o runs/hub --steps 1500    # 3 seeds, ~40 min (≈13 min per seed, 1 thread)
    python analysis/hub_circuit.py -o runs/hub_pp --config bench/configs/likelihood_circuit.yaml   # the point process
    python analysis/hub_circuit.py --quick -o /tmp/hub         # seconds; what the test runs

Writes OUT/table.json (per seed and mean ± sd), OUT/table.md, OUT/r2.png and
OUT/seed{S}/connectivity_matrices.png, and prints the table.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from neuroformer.checkpoints import load_model
from neuroformer.config import load_config
from neuroformer.connectivity import (
    EFFECT_LAGS,
    glm_coupling,
    lagged_correlation,
    model_connectivity,
    pearson_connectivity,
    score,
    scored,
)
from neuroformer.data.circuits import HubCircuitConfig, hub_circuit
from neuroformer.data.recording import open_recording
from neuroformer.data.synthetic import write_with_truth
from neuroformer.glm import GLMConfig, PoissonGLM
from neuroformer.io import atomic_path
from neuroformer.plots import connectivity_figure, subplots
from neuroformer.provenance import write_result
from neuroformer.training import RunOptions, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "circuit.yaml"
METRICS = ("r2", "spearman", "auroc")


def run_seed(out, seed, circuit, config, steps, windows, perturbation_windows, glm_cfg):
    """All measures and their scores for one seed; returns ({measure: scores}, stage times)."""
    out.mkdir(parents=True, exist_ok=True)
    times, clock = {}, time.perf_counter()
    rec = out / "hub.h5"
    if not rec.exists():
        write_with_truth(rec, *hub_circuit(HubCircuitConfig(**circuit, seed=seed)))
    truth = np.load(rec.with_suffix(".truth.npz"))["coupling"]
    times["circuit_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cfg = load_config(config)
    cfg.train.eval_every = cfg.train.checkpoint_every = min(cfg.train.eval_every, steps)
    cfg.train.glm_steps = min(cfg.train.glm_steps, steps // 2)             # a short run keeps transformer steps
    run = out / "run"
    train(cfg, [rec], RunOptions(run, max_steps=steps, seed=seed, resume=(run / "last.pt").exists()))
    times["train_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cfg, model, dataset, recordings = load_model(run / "best.pt", [rec])
    rid = recordings.recording_ids[0]
    matrices = model_connectivity(model, dataset, rid, "test", windows, perturbation_windows, progress=False)
    grad = model_connectivity(model, dataset, rid, "test", windows, 0, combine="grad", progress=False)
    matrices.update({f"{k} (grad)": v for k, v in grad.items() if not k.startswith("coupling")})   # no attention
    times["extract_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    data = open_recording(rec)
    matrices["pearson"] = pearson_connectivity(data, data.test_domain)
    matrices["lagged_correlation"] = lagged_correlation(data, data.test_domain)
    matrices["lagged_correlation (1-20 ms)"] = lagged_correlation(data, data.test_domain, lags=range(1, 21))
    times["correlations_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    window = f"{EFFECT_LAGS[0] * 1e3:g}-{EFFECT_LAGS[1] * 1e3:g}ms"
    glm_files = {"glm_coupling": out / "glm_coupling.npy",          # the GLM fit is the slow part of a re-run
                 "glm_coupling (1-20 ms)": out / f"glm_coupling_{window}.npy"}
    if not all(f.exists() for f in glm_files.values()):
        glm = PoissonGLM.fit(rec, glm_cfg, progress=False)
        np.save(glm_files["glm_coupling"], glm_coupling(glm))
        np.save(glm_files["glm_coupling (1-20 ms)"], glm_coupling(glm, lags=EFFECT_LAGS))
    matrices.update({name: np.load(f) for name, f in glm_files.items()})
    times["glm_s"] = time.perf_counter() - clock

    scores = {k: score(v, truth, scored(k)[1]) for k, v in matrices.items() if scored(k)[0]}
    shown = {k: matrices[k] for k in ("coupling (1-20 ms)", "self_attention (grad)", "history_attention (grad)", "perturbation",
                                      "pearson", "lagged_correlation (1-20 ms)", "glm_coupling (1-20 ms)") if k in matrices}
    connectivity_figure(shown, truth, out / "connectivity_matrices.png")
    np.savez_compressed(out / "matrices.npz", truth=truth, **matrices)
    return scores, times


def summarise(per_seed):
    """Mean and sd over seeds of every metric of every measure."""
    measures = list(next(iter(per_seed.values())))
    return {m: {f"{k}_{s}": float(f(np.array([per_seed[seed][m][k] for seed in per_seed])))
                for k in METRICS for s, f in (("mean", np.mean), ("sd", np.std))} for m in measures}


def table(summary, per_seed):
    pearson = {seed: scores["pearson"]["r2"] for seed, scores in per_seed.items()}
    lines = ["| measure | R² (mean ± sd) | Spearman | AUROC | R² above Pearson's in seeds |", "|---|---|---|---|---|"]
    for m, s in summary.items():
        wins = sum(per_seed[seed][m]["r2"] > pearson[seed] for seed in per_seed)
        lines.append(f"| {m} | {s['r2_mean']:.3f} ± {s['r2_sd']:.3f} | {s['spearman_mean']:.3f} ± "
                     f"{s['spearman_sd']:.3f} | {s['auroc_mean']:.3f} ± {s['auroc_sd']:.3f} | {wins}/{len(per_seed)} |")
    return "\n".join(lines)


def r2_figure(per_seed, path):
    measures = list(next(iter(per_seed.values())))
    fig, ax = subplots(figsize=(1.0 * len(measures) + 2, 3.6))
    for j, m in enumerate(measures):
        vals = [per_seed[s][m]["r2"] for s in per_seed]
        ax.bar(j, np.mean(vals), color="C0" if "attention" in m or m == "perturbation" or m.startswith("coupling") else "0.6")
        ax.scatter(np.full(len(vals), j), vals, color="k", s=8, zorder=3)
    ax.set_xticks(range(len(measures)))
    ax.set_xticklabels(measures, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("R² with true W (off-diagonal)")
    ax.set_title("hub circuit: variance of the true weights explained", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny circuit and model (for tests)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (quick: 0)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="model config (default configs/circuit.yaml)")
    parser.add_argument("--steps", type=int, help="training steps (default: the config's; quick 20)")
    parser.add_argument("--neurons", type=int, help="default 100 (quick 12)")
    parser.add_argument("--duration", type=float, help="recording length in s (default 600; quick 40)")
    args = parser.parse_args()
    quick = args.quick
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    circuit = dict(n_neurons=args.neurons or (12 if quick else 100), duration=args.duration or (40.0 if quick else 600.0))
    steps = args.steps or (20 if quick else load_config(args.config).train.max_steps)
    windows, perturbation_windows = (32, 2) if quick else (512, 64)
    glm_cfg = GLMConfig(penalties=(1.0, 0.1), max_iter=5) if quick else GLMConfig()
    per_seed, times = {}, {}
    for seed in seeds:
        per_seed[seed], times[seed] = run_seed(args.output / f"seed{seed}", seed, circuit, args.config, steps, windows,
                                               perturbation_windows, glm_cfg)
        print(f"seed {seed}: {json.dumps({k: round(v, 1) for k, v in times[seed].items()})}")
    summary = summarise(per_seed)
    text = table(summary, per_seed)
    report = {"circuit": circuit, "steps": steps, "windows": windows, "perturbation_windows": perturbation_windows,
              "seeds": seeds, "summary": summary, "per_seed": per_seed, "times_s": times}
    write_result(args.output / "table.json", report, vars(args), seeds)
    with atomic_path(args.output / "table.md") as tmp:
        tmp.write_text(text + "\n")
    r2_figure(per_seed, args.output / "r2.png")
    print(text)


if __name__ == "__main__":
    main()
