"""Shared by the benchmarks."""
import json

from neuroformer.io import atomic_path


def peak_rss_mb():
    """High-water resident memory of this process image (VmHWM; unlike getrusage's ru_maxrss it
    does not carry a parent's peak across fork and exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def write_report(path, report):
    """Write `report` as JSON to `path` through a temporary name: an interrupted run leaves the last one."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
