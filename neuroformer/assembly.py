"""A config assembled into what a run needs: recordings, window dataset and model.

Shared by training and by loading a trained model from its checkpoint (`checkpoints`), so
neither has to import the other.
"""
import dataclasses

import numpy as np

from .data.recording import first_fraction, resolve_variable
from .data.gaze import Gaze
from .data.windows import RecordingSet, WindowDataset, WindowSpec
from .errors import InputError
from .features import compute_features
from .model import Neuroformer


def uses_cached_features(cfg):
    return cfg.window.frames > 0 and cfg.model.backbone.name == "resnet18" and cfg.model.backbone.frozen


def window_spec(cfg):
    w = cfg.window
    return WindowSpec(current=w.current, history=w.history, frames=w.frames, behavior=w.behavior,
                      variables=tuple(cfg.variables(False) + cfg.variables(True)), dt_res=w.dt_res,
                      targets=tuple(cfg.variables(True)), target_lag=w.target_lag,
                      features=cfg.model.backbone.tag if uses_cached_features(cfg) else "", gaze=gaze(cfg),
                      calcium=w.calcium, adaptation=w.adaptation)


def gaze(cfg):
    """The config's gaze as the data layer's `Gaze` (false when frames are not shifted)."""
    return Gaze(**dataclasses.asdict(cfg.window.gaze))


def behavior_stats(recordings, names, fraction=1.0):
    """(mean, std) of each behaviour variable over the training split of all recordings (its
    first `fraction`: a few-shot run standardises on the labels it is given, no others)."""
    stats = []
    for name in names:
        values = []
        for rid in recordings.recording_ids:
            data = recordings.get_recording(rid)
            group, field = resolve_variable(data, name).split(".")
            series = getattr(data.behavior, group)
            t, v = np.asarray(series.timestamps), np.asarray(getattr(series, field))
            dom = first_fraction(data.train_domain, fraction)        # sorted, disjoint intervals
            k = np.searchsorted(dom.start, t, side="right") - 1
            inside = (k >= 0) & (t < dom.end[np.maximum(k, 0)])
            values.append(v[inside])
        v = np.concatenate(values)
        if not len(v):
            raise InputError(", ".join(map(str, recordings._paths.values())),
                             (f"behavior.{name}", "no sample lies in the training split"))
        stats.append([float(v.mean()), float(v.std() + 1e-6)])
    return stats


def _check_channels(cfg, recordings, dataset):
    """Every input variable has the number of channels its config declares."""
    for name, channels in cfg.channels().items():
        for rid in recordings.recording_ids:
            full = dataset.variables[rid][name]
            group, field = full.split(".")
            shape = _shape(getattr(recordings.get_recording(rid).behavior, group), field)
            found = shape[1] if len(shape) == 2 else 1
            if found != channels or len(shape) > 2:
                raise InputError(recordings._paths[rid], (f"behavior.{full}", f"has shape {tuple(shape)}: {found} "
                                                          f"channel(s), the config declares channels: {channels}"))


def _shape(series, field):
    value = series.__dict__.get(field)
    return value.shape if value is not None else np.shape(getattr(series, field))


def build(cfg, data_paths, vocab=None, stats=None, fraction=1.0):
    """Recordings, window dataset and model for a config (vocabulary and stats from a checkpoint
    when resuming, else made from the first `fraction` of the training split)."""
    recordings = RecordingSet(data_paths)
    for rid in recordings.recording_ids:
        data = recordings.get_recording(rid)
        if not len(data.spikes.timestamps):
            raise InputError(recordings._paths[rid], ("spikes", "none to model" + (
                ": the recording holds calcium traces only" if "calcium" in data.keys() else "")))
    if uses_cached_features(cfg):
        for path in data_paths:
            compute_features(path, cfg.model.backbone)
    dataset = WindowDataset(recordings, window_spec(cfg), vocab)
    _check_channels(cfg, recordings, dataset)
    frame_shape = dataset.frame_size
    names = cfg.variables(False) + cfg.variables(True)
    if stats is None:
        stats = behavior_stats(recordings, names, fraction)
    rates = unit_log_rates(recordings, dataset, cfg.window.dt_res, fraction) if cfg.model.point_process else None
    model = Neuroformer(cfg, len(dataset.vocab), frame_shape=frame_shape, behavior_stats=stats, unit_log_rates=rates)
    return recordings, dataset, model


def unit_log_rates(recordings, dataset, bin_size, fraction=1.0):
    """Log expected spike count per `bin_size` bin of every vocabulary token over the training
    split (first `fraction`): where the point-process model's baseline starts. Units that never
    fire there get half a spike's worth; tokens of no recording keep a 5 Hz guess."""
    counts = np.zeros(len(dataset.vocab))
    seconds = np.zeros(len(dataset.vocab))
    for rid in recordings.recording_ids:
        data, tokens = recordings.get_recording(rid), dataset.unit_tokens[rid]
        dom = first_fraction(data.train_domain, fraction)
        for a, b in zip(np.asarray(dom.start), np.asarray(dom.end)):
            np.add.at(counts, tokens, np.bincount(data.spikes.slice(a, b).unit_index, minlength=len(tokens)))
        seconds[tokens] += float(np.sum(np.asarray(dom.end) - np.asarray(dom.start)))
    rate = np.where(seconds > 0, np.maximum(counts, 0.5) / np.maximum(seconds, 1e-9), 5.0)
    return np.log(rate * bin_size)
