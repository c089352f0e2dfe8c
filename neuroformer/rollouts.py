"""Closed-loop simulation of whole trials with a trained model (docs/design.md §4); the simulated spikes
and their files are in `simulations`.

A trial is rolled out window by window (step = the current window). In each window the context
(frames and behaviour from the recording, history) is encoded once and the model samples the
window's spikes with a KV-cached decoder (`Neuroformer.generate`). With `history="generated"`
(closed loop, the default) the history of a window holds the spikes the model generated; before
the trial's start, where nothing was generated, it holds the recorded activity (the state the
trial starts from; no spike inside a simulated trial is ever read). `history="recorded"` reads
every window's history from the recording (open loop, the original implementation's rollout).

Trials and repeats are generated together in batches; each (seed, trial, repeat) draws its own
counter-based random numbers (`draws`), so spikes do not depend on the batch size. Repeats of a
trial share each window's recorded data, and the model encodes its frames and behaviour once.
Generated spikes sit at the centre of their dt_res bin.
"""
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.profiler import record_function
from tqdm import tqdm

from .checkpoints import checkpoint_file, load_model
from .data.objects import DatasetIndex, pad
from .data.recording import check_split
from .data.windows import collate_windows
from .draws import Draws
from .errors import InputError
from .model import Sampling
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
    batch: int = 16
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
    rows, truncated = [], 0
    for first in range(0, len(items), opts.batch):
        chunk = items[first:first + opts.batch]
        spikes, n = _rollout(model, dataset, rid, trials, chunk, opts, allowed, bar)
        truncated += n
        for (i, r), (bins, units) in zip(chunk, spikes):
            rows.append((np.full(len(bins), trials["index"][i]), np.full(len(bins), r),
                         (bins + 0.5) * spec.dt_res, unit_of_token[units]))
    bar.close()
    trial, repeat, times, units = (np.concatenate(c) for c in zip(*rows))
    order = np.lexsort((units, times, repeat, trial))
    attrs = {"truncated_windows": truncated, "options": json.dumps(asdict(opts), default=str), "dt_res": spec.dt_res}
    return Simulation(times[order], units[order].astype(np.int64), trial[order].astype(np.int64),
                      repeat[order].astype(np.int64), np.asarray(data.units.id).astype(str), trials,
                      opts.repeats, attrs)


def _rollout(model, dataset, rid, trials, chunk, opts, allowed, bar):
    """Generate one batch of (trial, repeat) items window by window; returns per item the
    generated (absolute bin, unit token) arrays, and how many windows hit the spike cap."""
    spec = dataset.spec
    n_cur = spec.n_dt - 1                            # bins per current window
    k_start = [int(round(trials["start"][i] / spec.dt_res)) for i, _ in chunk]
    k_end = [int(round(trials["end"][i] / spec.dt_res)) for i, _ in chunk]
    n_windows = [-(-(e - s) // n_cur) for s, e in zip(k_start, k_end)]
    draws = Draws([trial_seed(opts.seed, int(trials["index"][i]), r) for i, r in chunk])
    bins, units = [[] for _ in chunk], [[] for _ in chunk]      # per item: generated arrays, window by window
    truncated = 0
    for w in range(max(n_windows)):
        with record_function("window data"):
            loaded, samples, same = {}, [], []          # repeats of a trial share its window's recorded data
            for j, (i, _) in enumerate(chunk):
                k0 = k_start[j] + min(w, n_windows[j] - 1) * n_cur
                if (i, k0) not in loaded:
                    loaded[i, k0] = j, dataset[DatasetIndex(rid, k0 * spec.dt_res - spec.before, (k0 + n_cur) * spec.dt_res)]
                first, sample = loaded[i, k0]
                if opts.history == "generated":
                    sample = {**sample, "history": _closed_loop_history(sample["history"], bins[j], units[j], k0,
                                                                        k_start[j], spec)}
                samples.append(sample)
                same.append(first)
            batch = to_device(collate_windows(samples), opts.device)
        active = [w < n for n in n_windows]
        out, hit = model.generate(batch, draws, active, allowed, opts.sampling, cache=opts.cache,
                                  same=torch.tensor(same, device=opts.device))
        truncated += int(hit)
        for j, spikes in enumerate(out):
            if spikes:
                q, u = np.asarray(spikes, dtype=np.int64).T
                k = k_start[j] + w * n_cur + q
                bins[j].append(k[k < k_end[j]])
                units[j].append(u[k < k_end[j]])
        bar.update(sum(min(n_cur, max(0, e - s - w * n_cur)) for s, e in zip(k_start, k_end)))
    return [(_cat(b), _cat(u)) for b, u in zip(bins, units)], truncated


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
