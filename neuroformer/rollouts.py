"""Closed-loop simulation of whole trials with a trained model (docs/design.md §4); the simulated spikes
and their files are in `simulations`.

A trial is rolled out window by window (step = the current window). In each window the context
(frames and behaviour from the recording, history) is encoded once and the model samples the
window's spikes with a KV-cached decoder (`generation.generate`). With `history="generated"`
(closed loop, the default) the history of a window holds the spikes the model generated; before
the trial's start, where nothing was generated, it holds the recorded activity (the state the
trial starts from; no spike inside a simulated trial is ever read). `history="recorded"` reads
every window's history from the recording (open loop, the original implementation's rollout).

Trials and repeats are generated together, `batch` windows at a time, each row of the batch
moving on to its next window as soon as its window ends (continuous batching, `generation`);
each (seed, trial, repeat) draws its own counter-based random numbers (`draws`), so spikes do not
depend on the batch size. Repeats of a trial share each window's recorded data, and the model
encodes its frames and behaviour (and their cross-attention keys) once for the repeats that
reach the window (until the last of them does, `Windows.pending`, up to `generation.KEPT_STIMULI`
or `AHEAD` + 1 windows per row), a new window's with
those of up to `generation.AHEAD` windows after it (one batch: known in advance).
Generated spikes sit at the centre of their dt_res bin.
"""
import json
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from .checkpoints import checkpoint_file, load_model
from .data.objects import DatasetIndex, pad
from .data.recording import check_split
from .data.windows import collate_windows
from .draws import Draws
from .errors import InputError
from .generation import Sampling, Windows, generate
from .provenance import as_text
from .simulations import Simulation, trial_seed
from .training import to_device


@dataclass
class SimulationOptions:
    split: str = "test"
    trials: tuple | None = None         # indices into the recording's trials; default: all of `split`
    repeats: int = 1
    seed: int = 0
    history: str = "generated"          # "generated" (closed loop) or "recorded" (open loop)
    sampling: Sampling = field(default_factory=Sampling)
    batch: int = 64                     # rows at once (at most the trials x repeats)
    cache: bool = True                  # False: re-run the whole model for every spike (naive)
    device: str = "cpu"
    progress: bool = True


def select_trials(data, path, split="test", trials=None):
    """Trial table rows to simulate: `trials` (indices) or every trial inside `split`'s domain.
    A recording without trials uses its split's intervals as trials."""
    if "trials" in data.keys() and len(data.trials) > 0:
        start, end = np.asarray(data.trials.start), np.asarray(data.trials.end)
        stim = (np.asarray(data.trials.stimulus_id) if "stimulus_id" in data.trials.keys()
                else np.full(len(start), -1))
    else:
        dom = getattr(data, f"{split}_domain")
        start, end, stim = np.asarray(dom.start), np.asarray(dom.end), np.full(len(dom), -1)
    if trials is None:
        dom = getattr(data, f"{split}_domain")
        k = np.searchsorted(dom.start, start, side="right") - 1
        index = np.flatnonzero((k >= 0) & (end <= np.asarray(dom.end)[np.maximum(k, 0)] + 1e-9))
        if len(index) == 0:
            raise InputError(path, (f"{split}_domain", "no trial lies inside this split"))
    else:
        index = np.asarray(trials, dtype=int)
        bad = index[(index < 0) | (index >= len(start))]
        if len(bad):
            raise InputError(path, ("trials", f"no trial {bad.tolist()} (the recording has {len(start)})"))
    return {"index": index, "start": start[index], "end": end[index], "stimulus_id": stim[index]}


def _check(opts, path):
    check_split(opts.split)
    problems = []
    if opts.history not in ("generated", "recorded"):
        problems.append(("--history", f"expected 'generated' or 'recorded', got {opts.history!r}"))
    if opts.repeats < 1 or opts.batch < 1:
        problems.append(("--repeats/--batch", "must be at least 1"))
    s = opts.sampling
    if not s.temperature > 0 or s.top_k < 0 or not 0 < s.top_p <= 1 or s.max_spikes < 1:
        problems.append(("sampling", "temperature > 0, top-k >= 0, 0 < top-p <= 1 and max-spikes >= 1"))
    if problems:
        raise InputError(path, *problems)


def simulate(checkpoint, data_path, opts=SimulationOptions()):
    """Roll out the selected trials of `data_path` with the model of `checkpoint` (a .pt file or
    a run directory, whose best.pt is used)."""
    checkpoint = checkpoint_file(checkpoint)
    _check(opts, data_path)
    cfg, model, dataset, recordings = load_model(checkpoint, [data_path], opts.device)
    rid = recordings.recording_ids[0]
    trials = select_trials(recordings.get_recording(rid), data_path, opts.split, opts.trials)
    sim = rollout(model, dataset, rid, trials, opts)
    sim.attrs.update(recording=str(data_path), checkpoint=str(checkpoint), provenance=as_text(cfg, opts.seed))
    return sim


def rollout(model, dataset, rid, trials, opts):
    """Simulate `trials` (index, start, end, stimulus_id) of recording `rid` of `dataset` with `model`."""
    data, spec = dataset.recordings.get_recording(rid), dataset.spec
    tokens = dataset.unit_tokens[rid]
    allowed = torch.zeros(len(dataset.vocab), dtype=torch.bool, device=opts.device)
    allowed[torch.as_tensor(tokens)] = True
    unit_of_token = np.full(len(dataset.vocab), -1)
    unit_of_token[tokens] = np.arange(len(tokens))

    items = [(i, r) for i in range(len(trials["index"])) for r in range(opts.repeats)]
    total_bins = int(round(np.sum(trials["end"] - trials["start"]) / spec.dt_res)) * opts.repeats
    bar = tqdm(total=total_bins, unit=" sim s", unit_scale=spec.dt_res, desc="simulating", disable=not opts.progress,
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} sim s [{elapsed}<{remaining}, {rate_fmt}]")
    source = _TrialWindows(dataset, rid, trials, items, opts, bar)
    draws = Draws([trial_seed(opts.seed, int(trials["index"][i]), r) for i, r in items])
    generate(model, source, draws, allowed, opts.sampling, cache=opts.cache, slots=min(opts.batch, len(items)))
    bar.close()
    rows = []
    for (i, r), bins, units in zip(items, source.bins, source.units):
        bins, units = _cat(bins), _cat(units)
        rows.append((np.full(len(bins), trials["index"][i]), np.full(len(bins), r),
                     (bins + 0.5) * spec.dt_res, unit_of_token[units]))
    trial, repeat, times, units = (np.concatenate(c) for c in zip(*rows))
    order = np.lexsort((units, times, repeat, trial))
    attrs = {"truncated_windows": source.truncated, "options": json.dumps(asdict(opts), default=str),
             "dt_res": spec.dt_res}
    return Simulation(times[order], units[order].astype(np.int64), trial[order].astype(np.int64),
                      repeat[order].astype(np.int64), np.asarray(data.units.id).astype(str), trials,
                      opts.repeats, attrs)


class _TrialWindows:
    """The windows of (trial, repeat) items as a generation source (`generation`): an item's
    windows in order, each ready once the one before it ended, so that its history holds the
    spikes just generated; items start in order. Collects each item's generated (absolute bin,
    unit token) arrays. Repeats of a trial share each window's recorded data, read once."""

    def __init__(self, dataset, rid, trials, items, opts, bar):
        self.dataset, self.rid, self.items, self.opts, self.bar = dataset, rid, items, opts, bar
        spec = dataset.spec
        self.n_cur = spec.n_dt - 1                               # bins per current window
        self.k_start = [int(round(trials["start"][i] / spec.dt_res)) for i, _ in items]
        self.k_end = [int(round(trials["end"][i] / spec.dt_res)) for i, _ in items]
        self.n_windows = [-(-(e - s) // self.n_cur) for s, e in zip(self.k_start, self.k_end)]
        self.window = [0] * len(items)                           # each item's next window
        self.bins, self.units = [[] for _ in items], [[] for _ in items]
        self.ready, self.started, self.finished, self.truncated = [], 0, 0, 0
        self.recorded = {}                                       # (trial, k0) -> [sample, repeats yet to read it]
        self.offered = set()                                     # keys handed out, or offered as upcoming

    def waiting(self):
        return len(self.items) - self.finished

    def take(self, n):
        rows = self.ready[:n]
        self.ready = self.ready[n:]
        new = min(n - len(rows), len(self.items) - self.started)
        rows += list(range(self.started, self.started + new))
        self.started += new
        if not rows:
            return None
        samples, keys = [], []
        for row in rows:
            k0 = self.k_start[row] + self.window[row] * self.n_cur
            sample = self._recorded(self.items[row][0], k0)
            if self.opts.history == "generated":
                sample = {**sample, "history": _closed_loop_history(sample["history"], self.bins[row], self.units[row],
                                                                    k0, self.k_start[row], self.dataset.spec)}
            samples.append(sample)
            keys.append((self.items[row][0], k0))
        self.offered.update(keys)
        return Windows(rows, to_device(collate_windows(samples), self.opts.device), keys, partial(self._upcoming, rows),
                       self.recorded.__contains__)                  # read ahead or by some repeats only: still to start

    def _upcoming(self, rows, n):
        """Up to n windows that items `rows` reach after those they start now, not offered before
        (each item's next one first, then the one after): their recorded data, collated, and keys;
        or None. Their frames and behaviour do not depend on the spikes yet to be generated."""
        keys = []
        for ahead in range(1, n + 1):
            for row in rows:
                w = self.window[row] + ahead
                key = (self.items[row][0], self.k_start[row] + w * self.n_cur)
                if w < self.n_windows[row] and key not in self.offered and key not in keys:
                    keys.append(key)
        keys = keys[:n]
        if not keys:
            return None
        self.offered.update(keys)
        samples = [self._recorded(*key, read=False) for key in keys]
        return to_device(collate_windows(samples), self.opts.device), keys

    def _recorded(self, trial, k0, read=True):
        """The recorded window at bin k0 of `trial`, read once for all its repeats (`read`: one of
        them reads it now; otherwise it is only looked at, ahead of them)."""
        spec = self.dataset.spec
        if (trial, k0) not in self.recorded:
            index = DatasetIndex(self.rid, k0 * spec.dt_res - spec.before, (k0 + self.n_cur) * spec.dt_res)
            self.recorded[trial, k0] = [self.dataset[index], self.opts.repeats]
        entry = self.recorded[trial, k0]
        entry[1] -= int(read)
        if entry[1] == 0:
            del self.recorded[trial, k0]
        return entry[0]

    def put(self, row, bins, units, truncated):
        k0 = self.k_start[row] + self.window[row] * self.n_cur
        k = k0 + np.asarray(bins, dtype=np.int64)
        inside = k < self.k_end[row]
        self.bins[row].append(k[inside])
        self.units[row].append(np.asarray(units, dtype=np.int64)[inside])
        self.truncated += int(truncated)
        self.bar.update(min(self.n_cur, self.k_end[row] - k0))
        self.window[row] += 1
        if self.window[row] < self.n_windows[row]:
            self.ready.append(row)
        else:
            self.finished += 1


def _closed_loop_history(recorded, bins, units, k0, k_start, spec):
    """History tokens of a window at bin k0: recorded before the trial start, generated after."""
    recorded = recorded.obj
    n_hist, n_cur = int(round(spec.history / spec.dt_res)), spec.n_dt - 1
    q_rec = np.round(recorded["time"].numpy() / spec.dt_res).astype(np.int64)
    before = k0 + q_rec < k_start
    back = -(-n_hist // n_cur) + 1                   # generated windows the history can reach
    k, u = _cat(bins[-back:]), _cat(units[-back:])
    recent = (k >= k0 - n_hist) & (k < k0)
    q = np.concatenate([q_rec[before], k[recent] - k0])
    u = np.concatenate([recorded["unit"].numpy()[before], u[recent]])
    order = np.lexsort((u, q))
    return pad({"unit": torch.from_numpy(u[order]),
                "time": torch.from_numpy((q[order] * spec.dt_res).astype(np.float32)),
                "mask": torch.ones(len(q), dtype=torch.bool)})


def _cat(arrays):
    return np.concatenate(arrays) if len(arrays) else np.zeros(0, np.int64)
