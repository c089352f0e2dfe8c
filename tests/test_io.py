"""Atomic writes: a finished write replaces the file; a failed one leaves the old file and no
temporary. A result is written with its provenance."""
import json

import numpy as np
import pytest

from neuroformer.config import config_from_dict
from neuroformer.io import atomic_savez, atomic_write_json
from neuroformer.provenance import write_result

from conftest import check_provenance


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


def test_a_result_is_written_with_its_provenance(tmp_path):
    cfg = config_from_dict({"model": {"width": 32}})
    written = write_result(tmp_path / "r.json", {"r": 0.5, "rows": np.arange(2)}, cfg, seed=[3, 4])
    assert json.loads((tmp_path / "r.json").read_text()) == {**written, "rows": [0, 1]}
    check_provenance(tmp_path / "r.json", [3, 4], cfg)
