"""Training speed and memory at the demo size and at the original Neuroformer's published size.

Each config trains in a fresh process on the synthetic recording (100 neurons, ~6 Hz) with
batch 32, 50 ms current and history windows and 3 frames of 64x112; after 3 warm-up steps it
times 10 optimizer steps. Reported: seconds per step, spike tokens per second, tokens per
sample (current + history spikes, visual tokens, behaviour tokens) and peak resident memory
(VmHWM, including ~600 MB of imports). Then configs/small.yaml (the transformer alone at the demo's size) on one thread, on two, and as two
one-thread runs side by side (their timed steps start together): whether a second core serves a
small model better as a second thread or as a second run (the decoding study's --jobs).

    python bench/bench_train.py           # ~4 min on 2 cores
    python bench/bench_train.py --quick   # what the test runs
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import peak_rss_mb

from neuroformer.provenance import write_result

ROOT = Path(__file__).resolve().parents[1]


def measure(config, recording, steps, warmup, batch_size, threads=None, barrier=None, peers=1):
    """Train `config` on `recording`; after `warmup` steps (and, with `barrier`, once all `peers`
    processes have reached it) time `steps` steps."""
    import torch

    from neuroformer.assembly import build
    from neuroformer.config import load_config
    from neuroformer.training import epoch_batches, to_device
    from neuroformer.data.windows import collate_windows

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(config)
    cfg.train.batch_size = batch_size
    recordings, dataset, model = build(cfg, [recording])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = epoch_batches(recordings, dataset.spec, "train", batch_size, 0, 0)
    spike_tokens = visual = behavior = 0
    clock = None
    for i in range(warmup + steps):
        if i == warmup:
            if barrier:
                wait_for_peers(barrier, peers)
            clock = time.perf_counter()
        batch = to_device(collate_windows([dataset[j] for j in batches[i % len(batches)]]), "cpu")
        out = model(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        if i >= warmup:
            spike_tokens += int(batch["current"]["mask"].sum() + batch["history"]["mask"].sum())
            if "frames" in batch:
                visual += int(batch["frames"]["mask"].sum()) * (model.visual_pos.shape[0])
            behavior += sum(int(v["mask"].sum()) for k, v in batch.items() if k.startswith("behavior."))
    seconds = (time.perf_counter() - clock) / steps
    n = steps * batch_size
    return dict(config=Path(config).name, width=cfg.model.width, heads=cfg.model.heads,
                layers_per_stack=cfg.model.decoder_layers, backbone=cfg.model.backbone.name,
                parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
                batch=batch_size, seconds_per_step=seconds, spike_tokens_per_s=spike_tokens / steps / seconds,
                spike_tokens_per_sample=spike_tokens / n, visual_tokens_per_sample=visual / n,
                behavior_tokens_per_sample=behavior / n, peak_rss_mb=peak_rss_mb(), threads=torch.get_num_threads())


def wait_for_peers(barrier, peers):
    """Mark this process at `barrier` (a directory) and wait until `peers` processes are there."""
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / str(os.getpid())).touch()
    while len(list(barrier.iterdir())) < peers:
        time.sleep(0.01)


def side_by_side(config, recording, quick, processes=1, threads=None, barrier=None):
    """Rows of `processes` children training `config` at once, each on `threads` threads."""
    command = [sys.executable, __file__, "--child", str(config), str(recording), *(["--quick"] if quick else []),
               *(["--threads", str(threads)] if threads else []),
               *(["--barrier", str(barrier), "--peers", str(processes)] if barrier else [])]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    outputs = [child.communicate()[0] for child in children]
    if any(child.returncode for child in children):
        raise RuntimeError(f"a benchmark child failed: {' '.join(command)}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outputs]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neuroformer-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps, warmup, batch = (2, 1, 4) if args.quick else (10, 3, 32)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], steps, warmup, batch,
                                 args.threads, args.barrier, args.peers)))
        return
    from neuroformer.data.synthetic import SyntheticConfig, write_synthetic

    args.workdir.mkdir(parents=True, exist_ok=True)
    recording = args.workdir / ("train_quick.h5" if args.quick else "train_demo.h5")
    if not recording.exists():
        write_synthetic(recording, SyntheticConfig(n_neurons=20, trial_length=3, n_movies=1, n_trials=4, n_heldout_movies=1,
                                                   heldout_trials=1) if args.quick else SyntheticConfig())
    rows = []
    for config in ("small.yaml", "published.yaml"):
        rows += side_by_side(ROOT / "configs" / config, recording, args.quick)
        print(json.dumps(rows[-1]), flush=True)
    demo = ROOT / "configs" / "small.yaml"
    threads = []
    for processes, n in ((1, 1), (1, 2), (2, 1)):
        runs = side_by_side(demo, recording, args.quick, processes, n, tempfile.mkdtemp(dir=args.workdir))
        seconds = float(np.mean([r["seconds_per_step"] for r in runs]))
        threads.append(dict(processes=processes, threads_each=n, seconds_per_step=seconds,
                            steps_per_s=processes / seconds))
        print(json.dumps(threads[-1]), flush=True)
    write_result(args.out, dict(quick=args.quick, date=time.strftime("%Y-%m-%d"), rows=rows, threads=threads),
                 vars(args), 0)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
