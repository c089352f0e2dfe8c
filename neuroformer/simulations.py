"""Simulated spikes: the container both simulators return (the model's rollouts in `rollouts`,
the GLM baseline's in `glm`), the per-(trial, repeat) seeds they share, and the files (HDF5,
NWB) they are saved to.

Imports nothing of the transformer, so the GLM baseline does not depend on it.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .errors import InputError
from .io import atomic_path, open_hdf5

SIM_FORMAT = 1


@dataclass
class Simulation:
    """Simulated spikes of several trials and repeats, on the recording's clock."""
    timestamps: np.ndarray              # (S,) float64 seconds
    unit_index: np.ndarray              # (S,) index into unit_ids
    trial: np.ndarray                   # (S,) index into the recording's trials
    repeat: np.ndarray                  # (S,)
    unit_ids: np.ndarray                # (N,) str
    trials: dict                        # index, start, end, stimulus_id: one row per simulated trial
    repeats: int
    attrs: dict = field(default_factory=dict)

    def spikes_of(self, trial, repeat):
        keep = (self.trial == trial) & (self.repeat == repeat)
        return self.timestamps[keep], self.unit_index[keep]


def trial_seed(seed, trial, repeat):
    """The generator seed of one (seed, trial, repeat)."""
    return int(np.random.SeedSequence([seed, trial, repeat]).generate_state(1)[0])



def save_simulation(sim, path):
    """HDF5: spikes/{timestamps, unit_index, trial, repeat}, units/id, trials/{index, start, end,
    stimulus_id}, and attributes (recording, checkpoint, options, provenance, repeats); written atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(format="neuroformer-simulation", format_version=SIM_FORMAT, repeats=sim.repeats,
                       **{k: v for k, v in sim.attrs.items()})
        g = f.create_group("spikes")
        for name in ("timestamps", "unit_index", "trial", "repeat"):
            g.create_dataset(name, data=getattr(sim, name))
        f.create_group("units").create_dataset("id", data=sim.unit_ids.astype("S"))
        t = f.create_group("trials")
        for name, values in sim.trials.items():
            t.create_dataset(name, data=values)
    return Path(path)


def load_simulation(path):
    """Read a file written by `save_simulation`; a wrong or incomplete file names what is missing."""
    with open_hdf5(path) as f:
        if f.attrs.get("format") != "neuroformer-simulation":
            raise InputError(path, ("format", "not a simulated-spikes file (neuroformer simulate writes them)"))
        needed = [f"spikes/{n}" for n in ("timestamps", "unit_index", "trial", "repeat")] + \
                 ["units/id"] + [f"trials/{n}" for n in ("index", "start", "end", "stimulus_id")]
        missing = [n for n in needed if n not in f]
        if missing:
            raise InputError(path, *[(n, "missing") for n in missing])
        s = {n: f[f"spikes/{n}"][()] for n in ("timestamps", "unit_index", "trial", "repeat")}
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                 if k not in ("format", "format_version", "repeats")}
        sim = Simulation(s["timestamps"], s["unit_index"], s["trial"], s["repeat"],
                         f["units/id"][()].astype(str), {n: f[f"trials/{n}"][()] for n in f["trials"]},
                         int(f.attrs["repeats"]), attrs)
    problems = _simulation_problems(sim)
    if problems:
        raise InputError(path, problems)
    return sim


def _simulation_problems(sim):
    """(field, problem) of a simulation whose spikes do not fit its own tables."""
    n = len(sim.timestamps)
    lengths = {f"spikes.{k}": len(getattr(sim, k)) for k in ("unit_index", "trial", "repeat")}
    problems = [(k, f"{v} values for {n} spikes.timestamps") for k, v in lengths.items() if v != n]
    if problems:
        return problems
    if not np.isfinite(sim.timestamps).all():
        problems.append(("spikes.timestamps", f"{int((~np.isfinite(sim.timestamps)).sum())} NaN or infinite values"))
    for name, values, size in [("spikes.unit_index", sim.unit_index, len(sim.unit_ids)),
                               ("spikes.repeat", sim.repeat, sim.repeats)]:
        bad = (values < 0) | (values >= size)
        if bad.any():
            problems.append((name, f"{int(bad.sum())} values outside [0, {size}) (e.g. {values[bad][0]})"))
    unknown = ~np.isin(sim.trial, sim.trials["index"])
    if unknown.any():
        problems.append(("spikes.trial", f"{int(unknown.sum())} values not in trials.index (e.g. {sim.trial[unknown][0]})"))
    return problems




def save_nwb(sim, path, session_description="Neuroformer simulation"):
    """NWB: one Units row per (repeat, unit) with `unit_name` and `repeat` columns, and a trials
    table (`trial_index`, `stimulus_id`). Deterministic for a given simulation."""
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile

    identifier = f"neuroformer-sim-{Path(str(sim.attrs.get('recording', 'recording'))).stem}-" \
                 f"{json.loads(sim.attrs.get('options', '{}')).get('seed', 0)}"
    nwb = NWBFile(session_description=session_description, identifier=identifier,
                  session_start_time=datetime(1970, 1, 1, tzinfo=timezone.utc),
                  notes=f"neuroformer simulate; model {sim.attrs.get('checkpoint', '')}; "
                        f"recording {sim.attrs.get('recording', '')}; options {sim.attrs.get('options', '')}")
    nwb.add_trial_column("trial_index", "index of the trial in the source recording")
    nwb.add_trial_column("stimulus_id", "movie shown on the trial (-1: none)")
    for i in np.argsort(sim.trials["start"]):
        nwb.add_trial(start_time=float(sim.trials["start"][i]), stop_time=float(sim.trials["end"][i]),
                      trial_index=int(sim.trials["index"][i]), stimulus_id=int(sim.trials["stimulus_id"][i]))
    nwb.add_unit_column("unit_name", "unit id in the source recording")
    nwb.add_unit_column("repeat", "repeat of the simulation")
    for r in range(sim.repeats):
        mine = sim.repeat == r
        for u, name in enumerate(sim.unit_ids):
            times = np.sort(sim.timestamps[mine & (sim.unit_index == u)])
            nwb.add_unit(spike_times=times, unit_name=str(name), repeat=r)
    with atomic_path(path) as tmp, NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwb)
    return Path(path)
