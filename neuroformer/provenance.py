"""How a result was made, recorded in every result file: command line, config, seed, package
version, git commit (when run from a checkout), torch version, machine and date."""
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


def provenance(config=None, seed=None):
    """A JSON-ready dict describing this process (config: a Config or a plain dict)."""
    import torch

    if hasattr(config, "to_dict"):
        config = config.to_dict()
    try:
        version = metadata.version("neuroformer")
    except metadata.PackageNotFoundError:
        version = None
    return {"command": [Path(sys.argv[0]).name, *sys.argv[1:]], "config": config, "seed": seed,
            "version": version, "commit": git_commit(), "torch": torch.__version__,
            "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def git_commit():
    """The commit of the checkout this package runs from (+ "-dirty" with local changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")
