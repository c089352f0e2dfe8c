"""How a result was made, recorded in every result file: command line, config, seed, package
version, git commit (when run from a checkout), torch version, machine and date.

JSON results carry it as their top-level "provenance" key (`write_result`); HDF5 and .npz
results as a "provenance" attribute or array holding the same dict as JSON text (`as_text`)."""
import functools
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .io import atomic_write_json

FIELDS = ("command", "config", "seed", "version", "commit", "torch", "machine", "python", "date")


def provenance(config=None, seed=None, commit=None):
    """A dict describing this process, as it reads back from JSON (config: a Config or a plain
    dict; commit: the code's commit when it is not run from a git checkout)."""
    import torch

    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return {"command": [Path(sys.argv[0]).name, *sys.argv[1:]], "seed": seed,
            "config": json.loads(json.dumps(config, default=jsonable)),
            "version": __version__, "commit": commit or git_commit(), "torch": torch.__version__,
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def as_text(config=None, seed=None):
    """`provenance` as JSON text, for an HDF5 attribute or an .npz entry."""
    return json.dumps(provenance(config, seed), default=jsonable)


def write_result(path, report, config=None, seed=None, indent=2, commit=None):
    """Write `report` (a dict) with its "provenance" to `path` as JSON, atomically (arrays as
    lists); returns `report` with its provenance."""
    report = {**report, "provenance": provenance(config, seed, commit)}
    atomic_write_json(path, report, indent=indent, default=jsonable)
    return report


def jsonable(value):
    """JSON for what json cannot write: arrays and numpy numbers as lists and numbers, the rest as text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


@functools.cache
def git_commit():
    """The commit of the checkout this package runs from (+ "-dirty" with local changes), or None
    (also when the package is installed inside some other repository)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        top, _, commit = head.stdout.strip().partition("\n")
        if head.returncode or Path(top).resolve() != here.parent:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")
