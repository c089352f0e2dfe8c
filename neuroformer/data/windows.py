"""Windows of one or more recordings, as padded token batches (docs/design.md §2).

A window at t0 holds:
- current tokens: [START at t0, spike_1, ..., spike_n] over [t0, t0 + current). Spike times are
  put on the `dt_res` grid (t0 itself is snapped to it, a shift under dt_res / 2; then
  q = floor(t / dt_res) - t0 / dt_res) and ordered by (q, unit index). Position i predicts token i+1: its gap class Δ = q_{i+1} - q_i in {0, ..., current/dt_res}
  then its unit; the last position predicts END (class `end_class`), with no unit target.
- history tokens over [t0 - history, t0), on the same grid (negative times);
- the movie frames whose onsets fall in [t0 + current - frames, t0 + current), with their index
  into the stored movies (the same index means the same movie frame, e.g. on repeated trials);
- behaviour samples in [t0 + current - behavior, t0 + current), under "behavior.<name as requested>";
  those of a target (decoded) variable `target_lag` s earlier, so spikes after them are in view;
- with `calcium`, the ΔF/F of every ROI at each imaging frame in [t0 + current - calcium, t0 + current),
  a token per ROI and frame (calcium tokens: unit, time, value).
All times given to the model are float32 seconds relative to t0. A sampled window spans
[t0 - before, t0 + current) with before = max(history, frames - current, behavior (+ target_lag) - current,
calcium - current),
and lies wholly inside one split's domain, so no split ever reads another's data.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import InputError
from .objects import (
    Dataset,
    DatasetIndex,
    RandomFixedWindowSampler,
    SequentialFixedWindowSampler,
    collate,
    pad,
)
from .gaze import Gaze, eye_centred
from .recording import movie_frame_dataset, open_recording, resolve_variable
from .validate import validate_file
from .vocab import START, UnitVocab

IGNORE = -100
ADAPTATION_RATE = 5.0     # frames a second the stimulus filter's running statistics are computed from
MIN_ADAPTATION_FRAMES = 10   # of them in window.adaptation: fewer, and a frame is judged mostly by itself
ADAPTATION_SLACK = 0.01   # s of adaptation frames read beyond the span (the model counts AGE_SLACK more)


@dataclass
class WindowSpec:
    current: float = 0.05
    history: float = 0.05
    frames: float = 0.15          # 0: no frames
    behavior: float = 0.05        # 0: no behaviour
    variables: tuple = ()         # behaviour variables to load ("group.field" or short names)
    dt_res: float = 0.001
    features: str = ""            # read cached frozen features of this backbone instead of pixels
    targets: tuple = ()           # the variables that are decoded (targets), read `target_lag` s earlier
    target_lag: float = 0.0
    gaze: Gaze = Gaze()           # given: frames shifted into eye-centred coordinates (pixels only)
    calcium: float = 0.0          # s of ΔF/F frames as calcium tokens; 0: none
    adaptation: float = 0.0       # s of frames (as "adapt") for the stimulus filter's running statistics

    @property
    def n_dt(self):
        """Number of gap classes 0 .. current/dt_res (END comes after them)."""
        return int(round(self.current / self.dt_res)) + 1

    @property
    def end_class(self):
        return self.n_dt

    @property
    def before(self):
        lag = self.target_lag if self.targets else 0.0
        return max(self.history, self.frames - self.current, self.behavior + lag - self.current,
                   self.calcium - self.current, 0.0)      # not `adaptation`: earlier frames are read, as the
                                                            # stimulus is known before the window's span

    @property
    def length(self):
        return self.before + self.current


class RecordingSet(Dataset):
    """torch_brain Dataset over recording files anywhere on disk (id = file stem).

    Files are validated when the set is made and opened lazily in each process, so forked
    DataLoader workers never share an HDF5 handle.
    """

    def __init__(self, paths, validate=True):
        paths = [Path(p) for p in paths]
        stems = [p.stem for p in paths]
        if len(set(stems)) != len(stems):
            raise InputError(", ".join(map(str, paths)), ("recording id", "two recordings share a file name stem"))
        self._recording_ids = sorted(stems)
        self._paths = dict(zip(stems, paths))
        self._open, self._pid = {}, None
        self.transform, self.namespace_attributes = None, None
        if validate:
            for rid in self._recording_ids:
                validate_file(self._paths[rid])

    def get_recording(self, recording_id, _namespace=""):
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        if recording_id not in self._open:
            self._open[recording_id] = open_recording(self._paths[recording_id])
        return self._open[recording_id]

    def get_sampling_intervals(self, split="train"):
        return {rid: getattr(self.get_recording(rid), f"{split}_domain") for rid in self.recording_ids}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"], state["_pid"] = {}, None
        return state


class WindowDataset(torch.utils.data.Dataset):
    """Maps a DatasetIndex (recording, start, end) to the tokens of one window."""

    def __init__(self, recordings, spec, vocab=None):
        self.recordings, self.spec = recordings, spec
        self.vocab = vocab if vocab is not None else UnitVocab()
        self.unit_tokens, self.variables, self.frame_size = {}, {}, None
        for rid in recordings.recording_ids:
            data = recordings.get_recording(rid)
            path = recordings._paths[rid]
            ids = data.units.id.astype(str)
            try:
                self.unit_tokens[rid] = self.vocab.extend(ids) if vocab is None else self.vocab.lookup(ids)
            except KeyError as err:
                raise InputError(path, ("units.id", err.args[0])) from None
            try:
                self.variables[rid] = {v: resolve_variable(data, v) for v in spec.variables}
            except KeyError as err:
                raise InputError(path, ("behavior", err.args[0])) from None
            if spec.frames > 0:
                if "movies" not in data.keys():
                    raise InputError(path, ("movies", "frames were requested (frames > 0) but the recording has no movie"))
                size = tuple(movie_frame_dataset(data).shape[1:])
                self.frame_size = self.frame_size or size
                if size != self.frame_size:
                    raise InputError(path, ("movies.frames", f"frame size {size} differs from {self.frame_size} of "
                                                             "the other recordings; batches need one size"))
                spec.gaze.check(data, size, path, spec.targets)
                if spec.adaptation > 0:
                    check_adaptation_span(data, spec.adaptation, path)
            check_calcium_span(data, spec.calcium, path)

    def __getitem__(self, index: DatasetIndex):
        spec = self.spec
        data = self.recordings.get_recording(index.recording_id)
        k0 = int(round((index.start + spec.before) / spec.dt_res))   # t0 on the dt_res grid
        t0 = k0 * spec.dt_res
        sample = {"t0": torch.tensor(t0, dtype=torch.float64)}
        sample.update(self._spikes(data, index.recording_id, k0))
        if spec.frames > 0:
            sample["frames"] = self._frames(data, index.recording_id, t0, spec.frames, adapting=spec.adaptation > 0)
        if spec.adaptation > 0:
            sample["adapt"] = self._frames(data, index.recording_id, t0, spec.adaptation + spec.frames + ADAPTATION_SLACK,
                                           adapting=True, rate=ADAPTATION_RATE,    # every frame's whole span
                                           showing=t0 + spec.current - spec.frames)
        for requested, name in self.variables[index.recording_id].items():
            lag = self.spec.target_lag if requested in self.spec.targets else 0.0
            sample[f"behavior.{requested}"] = self._behavior(data, name, t0, t0 + self.spec.current - lag)
        if spec.calcium > 0:
            sample["calcium"] = self._calcium(data, index.recording_id, t0)
        return sample

    def _spikes(self, data, rid, k0):
        """Tokens from grid bins q = floor(t / dt_res) - k0, so adjacent windows agree exactly."""
        spec = self.spec
        n_hist, n_cur = int(round(spec.history / spec.dt_res)), int(round(spec.current / spec.dt_res))
        window = data.spikes.slice((k0 - n_hist - 1) * spec.dt_res, (k0 + n_cur + 1) * spec.dt_res,
                                   reset_origin=False)
        q = np.floor(window.timestamps / spec.dt_res + 1e-6).astype(np.int64) - k0
        keep = (q >= -n_hist) & (q < n_cur)
        q, units = q[keep], self.unit_tokens[rid][window.unit_index[keep]]
        order = np.lexsort((units, q))
        q, units = q[order], units[order]
        past = q < 0
        hist_q, hist_u, cur_q, cur_u = q[past], units[past], q[~past], units[~past]
        tok_q = np.concatenate([[0], cur_q])
        dt_target = np.concatenate([np.diff(tok_q), [spec.end_class]])
        unit_target = np.concatenate([cur_u, [IGNORE]])
        return {
            "current": pad({
                "unit": torch.from_numpy(np.concatenate([[START], cur_u])),
                "time": torch.from_numpy((tok_q * spec.dt_res).astype(np.float32)),
                "dt_target": torch.from_numpy(dt_target),
                "unit_target": torch.from_numpy(unit_target),
                "mask": _ones(tok_q),
            }),
            "history": pad({
                "unit": torch.from_numpy(hist_u),
                "time": torch.from_numpy((hist_q * spec.dt_res).astype(np.float32)),
                "mask": _ones(hist_q),
            }),
            "n_spikes": torch.tensor(len(cur_q)),
        }

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_feature_files", None)
        state.pop("_feature_pid", None)
        return state

    def _frame_source(self, data, rid):
        """The stored frames, or their cached features (opened once per process)."""
        if not self.spec.features:
            return "pixels", movie_frame_dataset(data)
        if self.__dict__.get("_feature_pid") != os.getpid():
            self._feature_files, self._feature_pid = {}, os.getpid()
        if rid not in self._feature_files:
            path = self.recordings._paths[rid].with_suffix(f".{self.spec.features}.features.h5")
            if not path.exists():
                raise InputError(path, ("features", "no cached features; run compute_features first"))
            self._feature_files[rid] = h5py.File(path, "r")["features"]
        return "features", self._feature_files[rid]

    def _frames(self, data, rid, t0, span, adapting=False, rate=None, showing=None):
        """Frames with onsets in [t0 + current - span, t0 + current), read by partial I/O; at most
        `rate` a second (every k-th frame of each presentation); only of presentations still shown
        at `showing` (s) if given; `adapting`: also each frame's presentation (its row in the
        stimulus table) and the time it stands for (s), which the stimulus filter's running
        statistics need."""
        lo, hi = t0 + self.spec.current - span, t0 + self.spec.current
        pres = data.stimulus
        table = data.movie_table
        key, source = self._frame_source(data, rid)
        still = lo if showing is None else max(lo, showing)
        chunks, times, index, shown, duration = [], [], [], [], []
        for k in np.flatnonzero((pres.start < hi) & (pres.end > still)):
            m = pres.movie_index[k]
            fps, first = table.frame_rate[m], table.first_frame[m]
            every = max(1, int(round(fps / rate))) if rate else 1
            i0 = max(0, int(np.ceil((lo - pres.start[k]) * fps - 1e-9)))
            i1 = min(int(table.n_frames[m]), int(np.ceil((hi - pres.start[k]) * fps - 1e-9)))
            i0 = -(-i0 // every) * every                        # the same frames whichever the window
            if i1 > i0:
                chunks.append(source[first + i0:first + i1:every])
                kept = np.arange(i0, i1, every)
                times.append(pres.start[k] + kept / fps)
                index.append(first + kept)
                shown.append(np.full(len(kept), k))
                duration.append(np.full(len(kept), every / fps))
        frames = np.concatenate(chunks) if chunks else np.zeros((0, *source.shape[1:]), source.dtype)
        frames = frames.astype(np.float32) if key == "features" else frames
        times = np.concatenate(times) if times else np.zeros(0)
        if self.spec.gaze and key == "pixels":
            frames = eye_centred(frames, *self.spec.gaze.pixels(data, times))

        def joined(parts, dtype):
            return torch.from_numpy(np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
        out = {key: torch.from_numpy(frames), "time": torch.from_numpy((times - t0).astype(np.float32)),
               "index": joined(index, np.int64), "mask": _ones(times)}
        if adapting:
            out.update(presentation=joined(shown, np.int64), duration=joined(duration, np.float32))
        return pad(out)

    def _behavior(self, data, name, t0, end):
        """Samples of `name` in [end - behavior, end), times relative to t0."""
        group, field_name = name.split(".")
        series = getattr(data.behavior, group).slice(end - self.spec.behavior, end, reset_origin=False)
        values = np.asarray(getattr(series, field_name), dtype=np.float32)
        times = np.asarray(series.timestamps, dtype=np.float64) - t0
        return pad({"value": torch.from_numpy(values), "time": torch.from_numpy(times.astype(np.float32)),
                    "mask": _ones(values)})

    def _calcium(self, data, rid, t0):
        """Calcium tokens of the imaging frames in [t0 + current - calcium, t0 + current): each
        frame's ΔF/F of every ROI, frame by frame, times relative to t0."""
        end = t0 + self.spec.current
        series = data.calcium.slice(end - self.spec.calcium, end, reset_origin=False)
        dff = np.asarray(series.dff, dtype=np.float32)                        # (frames, ROIs)
        times = np.asarray(series.timestamps, dtype=np.float64) - t0
        units = self.unit_tokens[rid]
        return pad({"unit": torch.from_numpy(np.tile(units, len(dff))),
                    "time": torch.from_numpy(np.repeat(times, len(units)).astype(np.float32)),
                    "value": torch.from_numpy(dff.reshape(-1)), "mask": torch.ones(dff.size, dtype=torch.bool)})


def statistics_spacing(data):
    """Per movie of the recording, the time (s) between the frames the stimulus filter's running
    statistics read: `ADAPTATION_RATE` a second, or every frame of a slower movie."""
    rates = np.asarray(data.movie_table.frame_rate, dtype=float)
    return [max(1, int(round(fps / ADAPTATION_RATE))) / fps for fps in rates]


def least_adaptation_span(data):
    """The shortest `window.adaptation` (s) holding `MIN_ADAPTATION_FRAMES` statistics frames of
    every movie of the recording."""
    return MIN_ADAPTATION_FRAMES * max(statistics_spacing(data))


def check_adaptation_span(data, span, path):
    """The stimulus filter's running statistics need at least `MIN_ADAPTATION_FRAMES` of their
    frames in `span` s."""
    least = least_adaptation_span(data)
    if span < least:
        m = int(np.argmax(statistics_spacing(data)))                 # the slowest movie
        raise InputError(path, ("window.adaptation", f"{span:g} s holds fewer than {MIN_ADAPTATION_FRAMES} of the "
                                                     f"statistics' frames of movie {m} ({least / MIN_ADAPTATION_FRAMES:.3g} "
                                                     f"s apart): use at least {least:.3g} s"))


def check_calcium_span(data, span, path):
    """Calcium tokens over `span` s (0: none) need ΔF/F traces and at least one imaging frame."""
    if span > 0:
        if "calcium" not in data.keys():
            raise InputError(path, ("calcium", f"calcium tokens were requested (window.calcium {span:g} s) "
                                               "but the recording has no ΔF/F traces"))
        frame = 1 / float(data.calcium.sampling_rate)
        if span < frame:
            raise InputError(path, ("calcium", f"window.calcium {span:g} s is shorter than one imaging frame "
                                               f"({frame:.3g} s)"))


def _ones(values):
    """Mask of real entries; padding (added by collation) is False."""
    return torch.ones(len(values), dtype=torch.bool)


def collate_windows(samples):
    """torch_brain collation (padding with masks); padded targets become IGNORE."""
    batch = collate(samples)
    cur = batch["current"]
    cur["dt_target"] = cur["dt_target"].masked_fill(~cur["mask"], IGNORE)
    cur["unit_target"] = cur["unit_target"].masked_fill(~cur["mask"], IGNORE)
    return batch


@dataclass
class LoaderOptions:
    split: str = "train"
    batch_size: int = 32
    shuffle: bool = True          # random windows (training) or a sequential tiling
    seed: int = 0
    num_workers: int = 0
    step: float | None = None     # sequential step; default = the current window (tiles it)


def make_loader(paths, spec, options=LoaderOptions(), vocab=None, recordings=None):
    """DataLoader of window batches over `paths`, from the given split's domains.

    Random windows use torch_brain's RandomFixedWindowSampler with a seeded generator (same
    seed, same order); sequential ones tile the split with step `current`.
    """
    recordings = recordings or RecordingSet(paths)
    dataset = WindowDataset(recordings, spec, vocab)
    intervals = recordings.get_sampling_intervals(options.split)
    if options.shuffle:
        generator = torch.Generator().manual_seed(options.seed)
        sampler = RandomFixedWindowSampler(sampling_intervals=intervals, window_length=spec.length,
                                           generator=generator)
    else:
        sampler = SequentialFixedWindowSampler(sampling_intervals=intervals, window_length=spec.length,
                                               step=options.step or spec.current, drop_short=True)
    return torch.utils.data.DataLoader(dataset, batch_size=options.batch_size, sampler=sampler,
                                       collate_fn=collate_windows, num_workers=options.num_workers)
