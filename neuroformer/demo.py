"""`neuroformer demo`: the main job on data the package makes itself.

Stages and their budgets on 2 CPU cores (the whole demo stays under 10 minutes):
1. prepare the synthetic recording (~20 s),
2. summarise it and serve one epoch of training windows through the loader (~10 s),
3. write an overview figure and a JSON report.
"""
import json
import time
from pathlib import Path

from tqdm import tqdm

from .data.info import format_summary, summarize
from .data.synthetic import SyntheticConfig, write_synthetic
from .data.windows import LoaderOptions, WindowSpec, make_loader
from .io import atomic_path
from .plots import recording_overview


def run_demo(out_dir, seed=0):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report, clock = {}, time.perf_counter()

    recording = write_synthetic(out_dir / "synthetic.h5", SyntheticConfig(seed=seed))[0]
    report["prepare_s"] = time.perf_counter() - clock
    summary = summarize(recording)
    print(format_summary(summary))

    clock = time.perf_counter()
    spec = WindowSpec(variables=("running.speed", "eye.phi", "eye.theta"))
    loader = make_loader([recording], spec, LoaderOptions(batch_size=32, seed=seed))
    windows = tokens = 0
    for batch in tqdm(loader, desc="training windows", unit="batch"):
        windows += len(batch["t0"])
        tokens += int(batch["current"]["mask"].sum() + batch["history"]["mask"].sum())
    report["loader"] = {"windows": windows, "tokens": tokens,
                        "windows_per_s": windows / (time.perf_counter() - clock)}

    report["overview_png"] = str(recording_overview(recording, out_dir / "overview.png"))
    report["recording"] = summary
    with atomic_path(out_dir / "demo_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(f"loader: {windows} windows, {tokens} tokens, {report['loader']['windows_per_s']:.0f} windows/s")
    print(f"wrote {out_dir / 'demo_report.json'} and {report['overview_png']}")
    return report
