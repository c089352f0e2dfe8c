"""Atomic writes (to a temporary name beside the target, then rename, so nothing half-written
stays) and opening HDF5 files with a clear error."""
import json
import os
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .errors import InputError


def open_hdf5(path):
    """An HDF5 file opened read-only; a missing or unreadable file is an InputError naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, ("file", "does not exist"))
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(path, ("file", f"not a readable HDF5 file ({err})")) from None


@contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_savez(path, **arrays):
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return Path(path)


def atomic_write_json(path, obj, indent=2, default=None):
    """Write `obj` as JSON to `path` atomically (`default` as in json.dumps)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=default))
    return Path(path)
