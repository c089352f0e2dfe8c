"""Importers: NWB files, the original Neuroformer's array dictionary, and video files.

Each returns a recording `Data` object (see recording.py); `prepare` validates it, assigns
splits when the source has none, and writes it atomically.

Binned counts become spike times by one documented rule (`recording.counts_to_spikes`).
"""
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..config import read_yaml
from ..errors import InputError
from .calcium import with_events
from .imaging import calcium_series, checked_rate, imaging_parts, import_suite2p, nwb_traces, real_matrix
from .objects import IrregularTimeSeries, RegularTimeSeries
from .recording import assign_splits, counts_to_spikes, make_recording, save_recording, union
from .validate import require_finite, require_valid

# ---------------------------------------------------------------- shared helpers

def _name(text):
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(text)).strip("_") or "series"


def behavior_series(name, values, *, rate=None, start=0.0, timestamps=None):
    """One behaviour group: 1-D values give field `name`; (n, k) give `name_0` .. `name_{k-1}`.

    A single row or column (MATLAB's vectors) counts as 1-D. Integer (or boolean) values stay
    integers: class labels, decoded by classification.
    """
    values = np.asarray(values)
    values = values.astype(np.int64 if values.dtype.kind in "iub" else np.float64)
    if values.ndim == 2 and 1 in values.shape:
        values = values.ravel()
    if values.ndim == 1:
        fields = {name: values}
    elif values.ndim == 2:
        fields = {f"{name}_{i}": values[:, i] for i in range(values.shape[1])}
    else:
        raise ValueError(f"expected (samples,) or (samples, features), got shape {values.shape}")
    if timestamps is None:
        return RegularTimeSeries(sampling_rate=float(rate), domain_start=float(start), **fields)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if len(timestamps) != len(values):
        raise ValueError(f"{len(values)} samples but {len(timestamps)} timestamps")
    if not np.isfinite(timestamps).all():
        raise ValueError(f"{int((~np.isfinite(timestamps)).sum())} NaN or infinite timestamps")
    return IrregularTimeSeries(timestamps=timestamps, domain="auto", **fields)


def to_gray_uint8(frames):
    """Frames (N, H, W) or (N, H, W, 3) of any numeric type -> uint8 (N, H, W)."""
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] in (3, 4):
        weights = np.array([0.299, 0.587, 0.114])
        frames = frames[..., :3] @ weights
    if frames.ndim != 3:
        raise ValueError(f"expected (frames, height, width[, 3]), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = frames.astype(np.float64)
        if frames.size and np.nanmax(frames) <= 1.0:
            frames = frames * 255
        frames = np.clip(np.nan_to_num(frames), 0, 255).astype(np.uint8)
    return frames


def read_video(path):
    """All frames of a video file as grey uint8 (N, H, W), and its frame rate from the header."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, ("video", "file does not exist"))
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        if not cap.isOpened():
            raise InputError(path, ("video", "OpenCV cannot open this file as a video"))
        fps = cap.get(cv2.CAP_PROP_FPS)
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame)
    finally:
        cap.release()
    if not frames:
        raise InputError(path, ("video", "no frames could be decoded"))
    return np.stack(frames), float(fps)


def write_video(path, frames, fps):
    """Write grey uint8 frames (N, H, W) losslessly (FFV1 .avi) or as mp4v (.mp4)."""
    path = Path(path)
    fourcc = cv2.VideoWriter_fourcc(*("FFV1" if path.suffix == ".avi" else "mp4v"))
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), fourcc, float(fps), (w, h), False)
    if not writer.isOpened():
        raise InputError(path, ("video", "OpenCV could not open a writer for this file type"))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


@dataclass
class VideoSpec:
    """A video to attach: --video FILE --video-fps HZ --video-start S [--video-per-trial]."""
    path: str
    fps: float | None = None      # default: the file's own frame rate
    start: float = 0.0
    per_trial: bool = False       # shown at the start of every trial (stored once)


def one_movie(name, frames, fps, *, start=0.0, trials=None, per_trial=False, source, field_name):
    """make_recording arguments for one movie shown once at `start`, or at every trial start
    (+ start) — stored once either way; marks those trials' stimulus_id."""
    if per_trial:
        if trials is None:
            raise InputError(source, (field_name, "the movie is shown per trial but the recording has no trials"))
        starts = np.asarray(trials["start"], dtype=np.float64) + start
        trials["stimulus_id"] = np.zeros(len(starts), np.int64)
    else:
        starts = np.array([float(start)])
    return dict(movies=[(name, frames, fps)], presentations=dict(start=starts, movie_index=np.zeros(len(starts), np.int64)))


def attach_video(spec, trials=None):
    """make_recording arguments for the video of `spec` (trials gain their stimulus_id)."""
    frames, file_fps = read_video(spec.path)
    fps = spec.fps or file_fps
    if not fps or fps <= 0:
        raise InputError(spec.path, ("video-fps", "the file states no frame rate; pass --video-fps"))
    return one_movie(Path(spec.path).stem, frames, fps, start=spec.start, trials=trials, per_trial=spec.per_trial,
                     source=spec.path, field_name="video-per-trial")


def _domain(*arrays):
    values = [np.asarray(a, dtype=np.float64).ravel() for a in arrays if a is not None]
    values = np.concatenate([v[np.isfinite(v)] for v in values if v.size] or [np.zeros(1)])
    return float(min(0.0, values.min())), float(values.max()) + 1e-3


# ---------------------------------------------------------------- array dictionary

CONFIG_KEYS = {"session", "spikes", "frames", "calcium", "modalities", "intervals", "seed"}
STREAM_KEYS = {"data", "dt", "repeat"}
VARIABLE_KEYS = {"data", "dt", "predict", "objective", "n_classes"}
SPLIT_KEYS = ("intervals", "train_intervals", "valid_intervals", "test_intervals", "finetune_intervals")


@dataclass
class ArrayConfig:
    """The data config of an array dictionary (the original's keys, checked)."""
    session: str | None = None
    spikes: dict = field(default_factory=lambda: {"data": "spikes", "dt": None})
    frames: dict | None = None
    calcium: dict | None = None        # ΔF/F traces (n_rois, n_frames) and their frame interval dt
    modalities: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def load(cls, path=None, bin_size=None, behavior=(), frame_rate=None, imaging_rate=None):
        """From a YAML file (optional), then CLI shorthands filling the same structure."""
        raw = {}
        if path:
            raw = read_yaml(path) or {}
            _check_keys(path, "", raw, CONFIG_KEYS)
        cfg = cls(**raw)
        src = path or "data config"
        cfg.spikes = {"data": "spikes", "dt": None, **(cfg.spikes or {})}
        _check_keys(src, "spikes.", cfg.spikes, STREAM_KEYS)
        if bin_size is not None:
            cfg.spikes["dt"] = float(bin_size)
        if frame_rate is not None:
            cfg.frames = {"data": "frames", **(cfg.frames or {}), "dt": 1.0 / float(frame_rate)}
        if cfg.frames is not None:
            _check_keys(src, "frames.", cfg.frames, STREAM_KEYS)
        if imaging_rate is not None:
            cfg.calcium = {"data": "traces", **(cfg.calcium or {}), "dt": 1.0 / float(imaging_rate)}
        if cfg.calcium is not None:
            _check_keys(src, "calcium.", cfg.calcium, STREAM_KEYS - {"repeat"})
            if "dt" not in cfg.calcium:
                raise InputError(src, ("calcium.dt", "the imaging frame interval is required (--imaging-rate HZ or "
                                                     "calcium.dt seconds)"))
            if not _positive_seconds(cfg.calcium["dt"]):
                raise InputError(src, ("calcium.dt", f"must be a positive number (s), got {cfg.calcium['dt']!r}"))
            checked_rate(1.0 / cfg.calcium["dt"], src, "imaging rate (1 / calcium.dt)")
        for stream in ("spikes", "frames", "calcium"):
            key = (getattr(cfg, stream) or {}).get("data", stream)
            if not isinstance(key, str):
                raise InputError(src, (f"{stream}.data", f"expected the name of an array in the file, got {key!r}"))
        for item in behavior:
            name, _, dt = str(item).partition("=")
            try:
                dt = float(dt)
            except ValueError:
                raise InputError(src, ("--behavior", f"expected NAME=DT (seconds), got {item!r}")) from None
            cfg.modalities.setdefault("behavior", {}).setdefault("variables", {})[name] = {"data": name, "dt": dt}
        for mtype, modality in cfg.modalities.items():
            if not isinstance(modality, dict):
                raise InputError(src, (f"modalities.{mtype}", "expected a mapping with 'variables'"))
            for name, var in (modality.get("variables") or {}).items():
                _check_keys(src, f"modalities.{mtype}.variables.{name}.", var, VARIABLE_KEYS)
                if not _positive_seconds(var.get("dt")):
                    raise InputError(src, (f"modalities.{mtype}.variables.{name}.dt", "must be a positive number (s)"))
        _check_keys(src, "intervals.", cfg.intervals, set(SPLIT_KEYS))
        if cfg.spikes.get("dt") is not None and not _positive_seconds(cfg.spikes["dt"]):
            raise InputError(src, ("spikes.dt", f"must be a positive number (s), got {cfg.spikes['dt']!r}"))
        return cfg


def _positive_seconds(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value > 0


def _check_keys(src, prefix, mapping, allowed):
    if not isinstance(mapping, dict):
        raise InputError(src, (prefix.rstrip(".") or "config", f"expected a mapping, got {type(mapping).__name__}"))
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise InputError(src, [(prefix + k, f"unknown key (allowed: {sorted(allowed)})") for k in unknown])


def load_array_dict(path, allow_pickle=False):
    """The dictionary inside a .npz, .pkl/.pickle or .mat file. A pickle is read only when
    `allow_pickle`: loading one runs whatever code it holds."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, ("file", "does not exist" if not path.exists() else "is not a regular file"))
    if path.suffix in (".pkl", ".pickle") and not allow_pickle:
        raise InputError(path, ("file", "a pickle can run any code when loaded: convert it to .npz, or pass "
                                        "--allow-pickle if you trust its source"))
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        if path.suffix in (".pkl", ".pickle"):
            with open(path, "rb") as f:
                obj = pickle.load(f)
            if not isinstance(obj, dict):
                raise InputError(path, ("file", f"expected a pickled dict, got {type(obj).__name__}"))
            return obj
        if path.suffix == ".mat":
            from scipy.io import loadmat
            return {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, ("file", f"cannot read ({type(err).__name__}: {err})")) from None
    raise InputError(path, ("file", f"unsupported extension {path.suffix!r} (use .npz, .pkl or .mat)"))


def _get(arrays, key, path, field_name):
    if not isinstance(key, str):
        raise InputError(path, (field_name, f"expected the name of an array in the file, got {key!r}"))
    if key not in arrays:
        raise InputError(path, (field_name, f"key {key!r} not in the file (keys: {sorted(arrays)})"))
    return np.asarray(arrays[key])


def _as_intervals(values, path, field_name):
    """(K, 2) start/end pairs, or 1-D window starts (windows as long as the smallest step)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 2:
        return values
    if values.ndim == 1 and len(values) > 1:
        starts = np.unique(values)
        width = np.diff(starts).min()
        return np.stack([starts, starts + width], 1)
    raise InputError(path, (field_name, f"expected (K, 2) start/end pairs or >1 window start times, got shape {values.shape}"))


def import_arrays(path, cfg, allow_pickle=False):
    """The original Neuroformer array dictionary -> recording Data (spikes as binned counts, and/or
    calcium traces)."""
    path = Path(path)
    arrays = load_array_dict(path, allow_pickle)
    session = cfg.session or path.stem
    if cfg.calcium is not None:
        rate = 1.0 / float(cfg.calcium["dt"])
        traces = real_matrix(_get(arrays, cfg.calcium.get("data", "traces"), path, "calcium"), path, "calcium",
                             "(n_rois, n_frames)").T
        parts = imaging_parts(traces, rate, range(traces.shape[1]), session)
    elif cfg.spikes["data"] not in arrays and "traces" in arrays:
        raise InputError(path, ("traces", "calcium traces: give their frame rate (--imaging-rate HZ)"))
    if cfg.calcium is None or cfg.spikes["data"] in arrays or cfg.spikes.get("dt") is not None:   # spikes wanted
        counts = _get(arrays, cfg.spikes["data"], path, "spikes")
        if counts.ndim != 2:
            raise InputError(path, ("spikes", f"expected binned counts (n_neurons, n_timesteps), got shape {counts.shape}"))
        if not np.issubdtype(counts.dtype, np.number) or not np.isfinite(counts).all():
            raise InputError(path, ("spikes", "counts must be finite numbers"))
        if (counts < 0).any() or (counts != np.round(counts)).any():
            raise InputError(path, ("spikes", "counts must be non-negative integers"))
        if cfg.spikes.get("dt") is None:
            raise InputError(path, ("spikes.dt", "the bin size is required (--bin-size SECONDS or spikes.dt)"))
        bin_size = float(cfg.spikes["dt"])
        times, units = counts_to_spikes(counts.astype(np.int64), bin_size, seed=cfg.seed)
        duration = counts.shape[1] * bin_size
        if cfg.calcium is not None:
            if len(counts) != traces.shape[1]:
                raise InputError(path, ("spikes", f"{len(counts)} neurons, but the traces have {traces.shape[1]} ROIs"))
            if abs(duration - parts["domain"][1]) > max(bin_size, 1 / rate):
                raise InputError(path, ("spikes", f"the counts span {duration:g} s, the traces {parts['domain'][1]:g} s"))
            duration = max(duration, parts["domain"][1])
        else:
            parts = dict(unit_ids=[f"{session}/{i}" for i in range(len(counts))], session_id=session)
        parts.update(spike_times=times, spike_units=units, domain=(0.0, duration))

    spans = {k: _as_intervals(_get(arrays, cfg.intervals.get(k, k), path, k), path, k)
             for k in SPLIT_KEYS if cfg.intervals.get(k, k) in arrays}
    if "intervals" in spans and np.asarray(arrays[cfg.intervals.get("intervals", "intervals")]).ndim == 2:
        parts["trials"] = dict(start=spans["intervals"][:, 0], end=spans["intervals"][:, 1])

    behavior = {}
    for mtype, modality in cfg.modalities.items():
        for name, var in (modality.get("variables") or {}).items():
            values = _get(arrays, var.get("data", name), path, f"modalities.{mtype}.variables.{name}")
            try:
                behavior[_name(name)] = behavior_series(_name(name), values, rate=1.0 / var["dt"])
            except ValueError as err:
                raise InputError(path, (f"modalities.{mtype}.variables.{name}", str(err))) from None

    if cfg.frames is not None:
        try:
            frames = to_gray_uint8(_get(arrays, cfg.frames.get("data", "frames"), path, "frames"))
        except ValueError as err:
            raise InputError(path, ("frames", str(err))) from None
        parts.update(one_movie("frames", frames, 1.0 / float(cfg.frames["dt"]), trials=parts.get("trials"),
                               per_trial=cfg.frames.get("repeat") == "trials", source=path,
                               field_name="frames.repeat"))

    data = make_recording(**parts, behavior=behavior or None)
    if "train_intervals" in spans and "test_intervals" in spans:
        train = union(spans["train_intervals"])
        if "valid_intervals" in spans:
            valid = union(spans["valid_intervals"])
        else:  # the last tenth of the training time becomes validation
            train, valid = _carve_tail(train, 0.1)
        data.train_domain, data.valid_domain, data.test_domain = train, valid, union(spans["test_intervals"])
    if "finetune_intervals" in spans:
        data.finetune_domain = union(spans["finetune_intervals"])
    return data


def _carve_tail(interval, fraction):
    lengths = interval.end - interval.start
    cut_at = lengths.sum() * (1 - fraction)
    before = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    head, tail = [], []
    for s, e, b in zip(interval.start, interval.end, before):
        split = s + max(0.0, min(e - s, cut_at - b))
        if split > s:
            head.append((s, split))
        if e > split:
            tail.append((split, e))
    return union(head), union(tail)


# ---------------------------------------------------------------- NWB

def is_behavior_series(ts):
    """Whether an NWB TimeSeries is behaviour: a SpatialSeries, a series in one of pynwb's
    behaviour containers (Position, EyeTracking, BehavioralTimeSeries, ...) or anywhere in the
    processing module "behavior". Never an image or a recording of the brain (ElectricalSeries,
    LFP, calcium traces, ...): those are large and would be read whole."""
    from pynwb import ProcessingModule, behavior
    from pynwb.image import ImageSeries

    if isinstance(ts, ImageSeries):
        return False
    if isinstance(ts, behavior.SpatialSeries):
        return True
    containers = (behavior.BehavioralTimeSeries, behavior.BehavioralEvents, behavior.PupilTracking,
                  behavior.EyeTracking, behavior.CompassDirection, behavior.Position)
    parent = ts.parent
    while parent is not None:
        if isinstance(parent, containers) or (isinstance(parent, ProcessingModule) and parent.name == "behavior"):
            return True
        parent = parent.parent
    return False


def import_nwb(path):
    """An NWB file (pynwb) -> recording Data: units, behaviour series (`is_behavior_series`),
    trials, stimulus movie."""
    from pynwb import NWBHDF5IO
    from pynwb.base import TimeSeries
    from pynwb.image import ImageSeries

    path = Path(path)
    if not path.exists():
        raise InputError(path, ("file", "does not exist"))
    try:
        io = NWBHDF5IO(str(path), "r")
        nwb = io.read()
    except Exception as err:
        reason = (str(err).splitlines() or [""])[0][:200]
        raise InputError(path, ("file", f"pynwb cannot read it ({type(err).__name__}: {reason})")) from None
    try:
        session = _name(nwb.identifier or path.stem)
        imaging = None
        if nwb.units is None or len(nwb.units) == 0:        # an imaging session: its ROIs are the units
            imaging = nwb_traces(nwb, path)
            if imaging is None:
                raise InputError(path, ("units", "no Units table (sorted spikes) and no ophys RoiResponseSeries "
                                                 "(DfOverF or Fluorescence) in the file"))
            traces, rate, start, names = imaging
            times, units = np.zeros(0), np.zeros(0, dtype=np.int64)
        else:
            names = (nwb.units["unit_name"][:] if "unit_name" in nwb.units.colnames else nwb.units.id[:])
            per_unit = [np.asarray(nwb.units["spike_times"][i], dtype=np.float64) for i in range(len(nwb.units))]
            times = np.concatenate(per_unit)
            units = np.repeat(np.arange(len(per_unit)), [len(s) for s in per_unit])
            require_finite("spikes.timestamps", times, path)
            order = np.argsort(times, kind="stable")
            times, units = times[order], units[order]

        series = [obj for obj in nwb.objects.values() if isinstance(obj, TimeSeries)]
        behavior, movies, ends = {}, [], [times]
        for ts in series:
            if isinstance(ts, ImageSeries):
                movies.append(ts)
            elif is_behavior_series(ts) and ts.data is not None and np.ndim(ts.data) in (1, 2) \
                    and _name(ts.name) not in behavior:
                kw = dict(rate=ts.rate, start=ts.starting_time or 0.0) if ts.rate else dict(timestamps=ts.timestamps[:])
                try:
                    behavior[_name(ts.name)] = behavior_series(_name(ts.name), np.asarray(ts.data[:]), **kw)
                except ValueError as err:
                    raise InputError(path, (f"behavior.{_name(ts.name)}", str(err))) from None
                ends.append(np.asarray(behavior[_name(ts.name)].domain.end))
        trials = None
        if nwb.trials is not None and len(nwb.trials):
            trials = dict(start=np.asarray(nwb.trials["start_time"][:], dtype=np.float64),
                          end=np.asarray(nwb.trials["stop_time"][:], dtype=np.float64))
            ends.append(trials["end"])
        if nwb.epochs is not None and len(nwb.epochs):
            ends.append(np.asarray(nwb.epochs["stop_time"][:], dtype=np.float64))
        if imaging is not None:
            ends.append([start, start + len(traces) / rate])
        parts = dict(spike_times=times, spike_units=units, unit_ids=[f"{session}/{n}" for n in names],
                     domain=_domain(*ends), session_id=session,
                     subject_id=(nwb.subject.subject_id if nwb.subject is not None else None) or "unknown",
                     species=(nwb.subject.species if nwb.subject is not None else None) or None,
                     trials=trials, behavior=behavior or None)
        if imaging is not None:
            parts["calcium"] = calcium_series(traces, rate, start)
        if movies:
            parts.update(_nwb_movie(movies[0], path, parts["domain"]))
        return make_recording(**parts)
    finally:
        io.close()


def _nwb_movie(ts, path, domain):
    """The first ImageSeries: frames in the file, or an external video file beside it."""
    if ts.external_file is not None and len(ts.external_file):
        video = Path(ts.external_file[0])
        frames, fps = read_video(video if video.is_absolute() else path.parent / video)
    else:
        frames, fps = to_gray_uint8(ts.data[:]), None
    if ts.rate:
        fps, start = float(ts.rate), float(ts.starting_time or 0.0)
    elif ts.timestamps is not None:
        stamps = np.asarray(ts.timestamps[:])
        fps, start = 1.0 / float(np.median(np.diff(stamps))), float(stamps[0])
    else:
        start = 0.0
    if not fps:
        raise InputError(path, (f"stimulus {ts.name}", "no frame rate or timestamps"))
    return dict(one_movie(ts.name, frames, fps, start=start, source=path, field_name=f"stimulus {ts.name}"),
                domain=(domain[0], max(domain[1], start + len(frames) / fps)))


# ---------------------------------------------------------------- prepare

def prepare(source, out, *, config=None, bin_size=None, behavior=(), frame_rate=None, video=None,
            split=(0.7, 0.1, 0.2), seed=0, allow_pickle=False, imaging_rate=None, spike_amplitude=None):
    """Import `source` (.nwb, .npz/.pkl/.mat, a suite2p plane folder; a pickle only with
    `allow_pickle`), attach a video, deconvolve calcium traces into events when `spike_amplitude`
    is given, set splits, validate, save."""

    source = Path(source)
    if imaging_rate is not None and source.suffix == ".nwb":
        raise InputError(source, ("--imaging-rate", "an NWB file states its own imaging rate"))
    if source.suffix == ".nwb":
        data = import_nwb(source)
    elif source.is_dir():
        given = [flag for flag, value in (("--config", config), ("--bin-size", bin_size), ("--behavior", behavior),
                                          ("--frame-rate", frame_rate)) if value]
        if given:
            raise InputError(source, (given[0], "a suite2p folder takes --imaging-rate (or --allow-pickle) only"))
        data = import_suite2p(source, imaging_rate, allow_pickle)
    else:
        data = import_arrays(source, ArrayConfig.load(config, bin_size, behavior, frame_rate, imaging_rate),
                             allow_pickle)
    if video is not None:
        data = _with_video(data, video)
    if spike_amplitude is not None:
        data = with_events(data, spike_amplitude, seed, source)
    if "train_domain" not in data.keys():
        assign_splits(data, split, seed)
    require_valid(data, source)
    return save_recording(data, out)


def _with_video(data, spec):
    """Rebuild `data` with a video attached (replacing any movie)."""
    trials = None
    if "trials" in data.keys():
        trials = {k: np.asarray(getattr(data.trials, k)) for k in data.trials.keys()}
    recording_end = float(data.domain.end[-1])
    if spec.start >= recording_end:
        raise InputError(spec.path, ("video-start", f"{spec.start:g} s is not before the recording's end "
                                                    f"({recording_end:g} s)"))
    parts = attach_video(spec, trials)
    movie = parts["movies"][0]
    starts = parts["presentations"]["start"]
    end = max(data.domain.end[-1], float(np.max(starts)) + len(movie[1]) / movie[2])
    rebuilt = make_recording(
        spike_times=data.spikes.timestamps, spike_units=data.spikes.unit_index, unit_ids=data.units.id,
        domain=(data.domain.start[0], end), session_id=data.session.id, subject_id=data.subject.id,
        species=data.subject.species, trials=trials, **parts,
        behavior={k: getattr(data.behavior, k) for k in data.behavior.keys()} if "behavior" in data.keys() else None)
    for key in data.keys():
        if key.endswith("_domain"):
            setattr(rebuilt, key, getattr(data, key))
    return rebuilt
