"""Training cost against history length, at the density of real recordings: latent history
(model.latents) against every history spike as a memory token.

A synthetic recording of 200 units at ~20 Hz (no movie, no behaviour in the model); 50 ms
current windows, batch 32, the point-process heads; history 0.25, 0.5, 1 and 2 s. Each row
trains in a fresh process (`bench_train.measure`): seconds per step after warm-up and peak
resident memory (VmHWM, ~600 MB of it imports). Rows without latents stop at the history
where a step passes `--full-limit` seconds (attention over all history spikes grows with
their square). Last row: the decoding template as `neuroformer config` fits it (`--template
decoding`, hand velocity as targets) to an imported binned-count recording of that density
(simulate/velocity_population.py: 180 units at ~18 Hz, 50 ms bins), batch 32.

    python bench/bench_context.py            # ~10 min on 2 cores
    python bench/bench_context.py --quick    # what the test runs
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]


def config(history, latents, quick):
    """The benchmarked config: demo-sized width, spikes only, point process, `history` s."""
    return {"window": {"current": 0.05, "history": history, "frames": 0, "behavior": 0, "dt_res": 0.001},
            "model": {"width": 32 if quick else 64, "heads": 4, "history_layers": 1, "decoder_layers": 2,
                      "dropout": 0.1, "latents": latents, "point_process": True},
            "loss": {"spikes": 1.0, "contrastive": 0.0}}


def decoding_config(workdir, quick):
    """The decoding template fitted to a velocity population recording (made and imported first)."""
    from neuroformer.autoconfig import derive_raw

    arrays, recording = workdir / "vel.npz", workdir / "vel.h5"
    if not recording.exists():
        size = ["--units", "20", "--minutes", "1"] if quick else []
        subprocess.run([sys.executable, str(ROOT / "simulate" / "velocity_population.py"), "-o", str(arrays), *size],
                       check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "neuroformer.cli", "prepare", str(arrays), "--bin-size", "0.05",
                        "--behavior", "hand_vx=0.05", "--behavior", "hand_vy=0.05", "-o", str(recording)],
                       check=True, capture_output=True)
    return derive_raw(recording, "decoding", ["hand_vx", "hand_vy"])


def run_child(cfg, recording, quick, threads):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
    command = [sys.executable, str(ROOT / "bench" / "bench_train.py"), "--child", f.name, str(recording),
               *(["--quick"] if quick else []), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    Path(f.name).unlink()
    if done.returncode:
        raise RuntimeError(f"benchmark child failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neuroformer-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "context.json")
    parser.add_argument("--latents", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-limit", type=float, default=5.0, help="s/step beyond which full attention stops")
    args = parser.parse_args()
    from neuroformer.data.synthetic import SyntheticConfig, write_synthetic

    args.workdir.mkdir(parents=True, exist_ok=True)
    recording = args.workdir / ("context_quick.h5" if args.quick else "context_200x20hz.h5")
    if not recording.exists():
        n = 20 if args.quick else 200
        write_synthetic(recording, SyntheticConfig(n_neurons=n, mean_rate=20.0, trial_length=3.0, n_movies=1,
                                                   n_trials=6 if args.quick else 20, n_heldout_movies=1,
                                                   heldout_trials=1, height=16, width=16))
    histories = (0.25, 0.5) if args.quick else (0.25, 0.5, 1.0, 2.0)
    rows, full_stopped = [], False
    for history in histories:
        for latents in (args.latents, 0):
            if latents == 0 and full_stopped:
                continue
            row = run_child(config(history, latents, args.quick), recording, args.quick, args.threads)
            row.update(history=history, latents=latents)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("history", "latents", "seconds_per_step", "peak_rss_mb",
                                                  "spike_tokens_per_sample")}), flush=True)
            full_stopped |= latents == 0 and row["seconds_per_step"] > args.full_limit
    row = run_child(decoding_config(args.workdir, args.quick), args.workdir / "vel.h5", args.quick, args.threads)
    rows.append({**row, "history": 0.5, "latents": "derived", "recording": "velocity population (decoding template)"})
    print(json.dumps({k: rows[-1][k] for k in ("recording", "seconds_per_step", "peak_rss_mb")}), flush=True)
    write_result(args.out, {"quick": args.quick, "recording": recording.name, "rows": rows,
                            "date": time.strftime("%Y-%m-%d")}, vars(args), 0)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
