"""Random-window reading speed and memory from lazily opened recordings of two lengths.

Makes (or reuses) synthetic recordings of 1,000 neurons lasting 15 and 60 minutes, then in a
fresh process per recording reads 2,000 random 1 s windows (1 s of history, 1 s of frames,
running speed) through the library's loader, and reports windows/s and peak resident memory.
Memory that does not grow with the recording's length shows that reads are lazy.

    python bench/bench_windows.py            # full: ~12 min on 2 cores (most of it making the data)
    python bench/bench_windows.py --quick    # seconds; what the test runs
"""
import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from _common import peak_rss_mb

from neuroformer.provenance import write_result

FULL = dict(lengths=(900.0, 3600.0), neurons=1000, windows=2000)
QUICK = dict(lengths=(150.0, 300.0), neurons=50, windows=100)


def read_windows(path, n_windows, seed=0):
    """Read `n_windows` random windows; returns timing and memory figures."""
    import torch

    from neuroformer.data.windows import LoaderOptions, WindowSpec, make_loader

    torch.set_num_threads(1)
    spec = WindowSpec(current=1.0, history=1.0, frames=1.0, behavior=1.0, variables=("running.speed",))
    loader = make_loader([path], spec, LoaderOptions(batch_size=1, seed=seed))
    base_mb = peak_rss_mb()
    clock, n, tokens, frames = time.perf_counter(), 0, 0, 0
    while n < n_windows:
        for batch in loader:
            tokens += int(batch["current"]["mask"].sum() + batch["history"]["mask"].sum())
            frames += int(batch["frames"]["mask"].sum())
            n += 1
            if n == n_windows:
                break
    seconds = time.perf_counter() - clock
    peak_mb = peak_rss_mb()
    return dict(windows=n, seconds=seconds, windows_per_s=n / seconds, tokens_per_window=tokens / n,
                frames_per_window=frames / n, rss_before_reading_mb=base_mb, peak_rss_mb=peak_mb,
                file_mb=Path(path).stat().st_size / 2**20)


def make_recording(path, seconds, neurons):
    from neuroformer.data.synthetic import SyntheticConfig, write_synthetic

    if not path.exists():
        clock = time.perf_counter()
        write_synthetic(path, SyntheticConfig.for_duration(seconds, n_neurons=neurons, n_movies=1, seed=0))
        print(f"made {path} in {time.perf_counter() - clock:.0f} s", flush=True)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/neuroformer-bench"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "windows.json")
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)       # child process mode
    parser.add_argument("--windows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_windows(args.read, args.windows)))
        return
    setup = QUICK if args.quick else FULL
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for seconds in setup["lengths"]:
        path = make_recording(args.workdir / f"syn_{setup['neurons']}n_{int(seconds)}s.h5", seconds, setup["neurons"])
        child = subprocess.run([sys.executable, __file__, "--read", str(path), "--windows", str(setup["windows"])],
                               check=True, capture_output=True, text=True)
        from neuroformer.data.info import summarize

        summary = summarize(path)
        row = dict(recording_s=summary["duration_s"], neurons=summary["units"], spikes=summary["spikes"],
                   **json.loads(child.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = dict(machine=f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                          f"{__import__('os').cpu_count()} cores", quick=args.quick, rows=rows,
                  date=time.strftime("%Y-%m-%d"))
    write_result(args.out, report, vars(args), 0)
    _figure(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


def _figure(rows, png):
    from neuroformer.plots import subplots

    fig, axes = subplots(1, 2, figsize=(8, 3))
    minutes = [f"{r['recording_s'] / 60:g} min" for r in rows]
    axes[0].bar(minutes, [r["windows_per_s"] for r in rows])
    axes[0].set_ylabel("random 1 s windows / s")
    axes[1].bar(minutes, [r["peak_rss_mb"] for r in rows], label="peak")
    axes[1].bar(minutes, [r["rss_before_reading_mb"] for r in rows], label="before reading")
    axes[1].set_ylabel("resident memory (MB)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
