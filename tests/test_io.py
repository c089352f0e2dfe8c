"""Atomic writes: a finished write replaces the file; a failed one leaves the old file and no temporary."""
import json

import numpy as np
import pytest

from neuroformer.io import atomic_savez, atomic_write_json


def test_atomic_write_json_round_trip_and_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "sub" / "report.json"
    assert atomic_write_json(path, {"r": 0.5, "rows": [1, 2]}) == path
    assert json.loads(path.read_text()) == {"r": 0.5, "rows": [1, 2]}
    with pytest.raises(TypeError):
        atomic_write_json(path, {"r": object()})                  # not serialisable: the write fails
    assert json.loads(path.read_text()) == {"r": 0.5, "rows": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]
    atomic_write_json(path, {"r": object()}, indent=None, default=lambda o: "obj")
    assert path.read_text() == '{"r": "obj"}'


def test_atomic_savez_writes_the_name_it_is_given(tmp_path):
    assert atomic_savez(tmp_path / "matrices", a=np.arange(3)) == tmp_path / "matrices"
    assert [p.name for p in tmp_path.iterdir()] == ["matrices"]
    with np.load(tmp_path / "matrices") as f:
        assert f["a"].tolist() == [0, 1, 2]
