"""Atomic writes (to a temporary name beside the target, then rename, so nothing half-written
stays), checks of output paths before any work, and opening HDF5 files with a clear error."""
import json
import os
import tempfile
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


def check_output(path, inputs=(), option="-o", folder=False):
    """Refuse, before any work, an output `path` that is one of `inputs` ((flag, path) pairs), a
    device or special file, a folder where a file is due (or a file where a folder is due), or
    that cannot be written."""
    path = Path(path)
    for flag, source in inputs:
        if _same_file(path, source):
            raise InputError(path, (option, f"is also the input {flag}: writing it would destroy the input"))
    if path.exists():
        if folder and not path.is_dir():
            raise InputError(path, (option, "exists and is not a folder"))
        if not folder and path.is_dir():
            raise InputError(path, (option, "is a folder: give a file name"))
        if not folder and not path.is_file():
            raise InputError(path, (option, "is a device or special file, not a regular file"))
    parent = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise InputError(path, (option, f"cannot write in {parent} ({err.strerror or err})")) from None


def _same_file(a, b):
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


TEMPORARY = ".tmp"        # a temporary is .NAME.tmpPID.SUFFIX: hidden, and never a file a reader asks for


@contextmanager
def atomic_path(path):
    """Yield a temporary path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMPORARY}{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_temporaries(folder):
    """Delete the temporaries a killed write left in `folder` (a write that ends removes its own)."""
    for p in Path(folder).glob(f".*{TEMPORARY}*"):
        if p.is_file():
            p.unlink()


def atomic_savez(path, **arrays):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:      # a file object: numpy adds no ".npz"
        np.savez_compressed(f, **arrays)
    return Path(path)


def atomic_write_json(path, obj, indent=2, default=None):
    """Write `obj` as JSON to `path` atomically (`default` as in json.dumps)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=default))
    return Path(path)
