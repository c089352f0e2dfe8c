"""Shared by the benchmarks."""


def peak_rss_mb():
    """High-water resident memory of this process image (VmHWM; unlike getrusage's ru_maxrss it
    does not carry a parent's peak across fork and exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")

