"""A recording: one brainsets-style HDF5 file (docs/design.md §1), built, saved and opened here.

Layout (all times in seconds on the session clock):

- `spikes`: IrregularTimeSeries(timestamps, unit_index), sorted by time.
- `units`: ArrayDict(id) — unit id strings, unique across sessions ("session/unit").
- `session`, `subject`: descriptions.
- `trials` (optional): Interval(start, end, stimulus_id) — stimulus_id is the movie index
  shown on the trial, or -1.
- `movies` (optional): ArrayDict(frames uint8 (F, H, W), movie_index) — every movie's frames
  stored once, concatenated; `movie_table`: ArrayDict(id, first_frame, n_frames, frame_rate).
- `stimulus` (optional): Interval(start, end, movie_index) — each presentation of a movie;
  a movie repeated over trials is referenced here, never copied.
- `calcium` (optional): RegularTimeSeries(dff (T, N) float32) — ΔF/F of every unit (an imaging
  ROI) at the imaging frame rate (data/imaging.py); a recording of traces alone has no spikes.
- `behavior` (optional): Data whose children are Regular/IrregularTimeSeries groups; a
  variable is addressed as "group.field" (e.g. "running.speed", "eye.phi").
- `domain`, `train_domain`, `valid_domain`, `test_domain`: Intervals.
"""
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..io import atomic_path, open_hdf5
from .objects import (
    ArrayDict,
    Data,
    Interval,
    IrregularTimeSeries,
    SessionDescription,
    SubjectDescription,
)

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")


def make_recording(
    *,
    spike_times,
    spike_units,
    unit_ids,
    domain,
    session_id,
    subject_id="unknown",
    species=None,
    trials=None,
    movies=None,
    presentations=None,
    behavior=None,
    calcium=None,
    splits=None,
):
    """Assemble a recording as a torch_brain `Data` object (not yet validated or saved).

    movies: list of (movie_id, frames (F, H, W) uint8, frame_rate).
    presentations: dict(start=..., movie_index=...) — end follows from the movie length.
    behavior: dict group -> RegularTimeSeries / IrregularTimeSeries.
    calcium: RegularTimeSeries of ΔF/F traces (`imaging.calcium_series`).
    splits: dict split -> Interval; None leaves them for `assign_splits`.
    """
    start, end = domain
    parts = dict(
        spikes=IrregularTimeSeries(
            timestamps=np.asarray(spike_times, dtype=np.float64),
            unit_index=np.asarray(spike_units, dtype=np.int64),
            domain=Interval(float(start), float(end)),
        ),
        units=ArrayDict(id=np.asarray([str(u) for u in unit_ids])),
        session=SessionDescription(id=str(session_id)),
        subject=SubjectDescription(id=str(subject_id), species=species),
        neuroformer_format=FORMAT_VERSION,
    )
    if trials is not None:
        cols = {k: np.asarray(v) for k, v in trials.items()}
        cols.setdefault("stimulus_id", np.full(len(cols["start"]), -1, dtype=np.int64))
        parts["trials"] = Interval(**cols)
    if movies:
        parts.update(_movie_parts(movies, presentations))
    if behavior:
        parts["behavior"] = Data(**behavior, domain="auto")
    if calcium is not None:
        parts["calcium"] = calcium
    for name, interval in (splits or {}).items():
        parts[f"{name}_domain"] = interval
    return Data(**parts, domain=Interval(float(start), float(end)))


def _movie_parts(movies, presentations):
    lengths = np.array([len(frames) for _, frames, _ in movies])
    rates = np.array([float(rate) for _, _, rate in movies])
    table = ArrayDict(
        id=np.asarray([str(m) for m, _, _ in movies]),
        first_frame=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        n_frames=lengths.astype(np.int64),
        frame_rate=rates,
    )
    frames = ArrayDict(
        frames=np.concatenate([np.asarray(f) for _, f, _ in movies]),
        movie_index=np.repeat(np.arange(len(movies)), lengths),
    )
    index = np.asarray(presentations["movie_index"], dtype=np.int64)
    starts = np.asarray(presentations["start"], dtype=np.float64)
    safe = np.clip(index, 0, len(movies) - 1)
    stimulus = Interval(start=starts, end=starts + lengths[safe] / rates[safe], movie_index=index)
    return dict(movies=frames, movie_table=table, stimulus=stimulus)


def union(intervals):
    """Sorted, disjoint union of a list of (start, end) pairs, as an Interval."""
    pairs = sorted((float(a), float(b)) for a, b in intervals)
    merged = []
    for a, b in pairs:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    if not merged:
        return Interval(start=np.zeros(0), end=np.zeros(0))
    arr = np.array(merged)
    return Interval(start=arr[:, 0], end=arr[:, 1])


def first_fraction(interval, fraction):
    """The first `fraction` of an Interval's total time (whole intervals, then a cut one): the
    labelled block of a few-shot run, nested for growing fractions."""
    start, end = np.asarray(interval.start, dtype=float), np.asarray(interval.end, dtype=float)
    if fraction >= 1:
        return interval
    budget = fraction * float(np.sum(end - start))
    before = np.concatenate([[0.0], np.cumsum(end - start)[:-1]])
    keep = before < budget
    cut_end = np.minimum(end, start + budget - before)[keep]
    return Interval(start=start[keep], end=cut_end)


def split_by_time(start, end, fractions):
    """Contiguous train/valid/test blocks of [start, end), in that order."""
    edges = start + (end - start) * np.concatenate([[0], np.cumsum(fractions)])
    edges[-1] = end
    return {name: union([(edges[i], edges[i + 1])] if edges[i + 1] > edges[i] else [])
            for i, name in enumerate(SPLITS)}


def split_by_trials(trials, fractions, seed, test_only_stimuli=()):
    """Whole trials to train/valid/test, stratified by stimulus_id, seeded.

    Trials of stimuli in `test_only_stimuli` (held-out movies) all go to test.
    """
    rng = np.random.default_rng(seed)
    stim = np.asarray(trials.stimulus_id) if "stimulus_id" in trials.keys() else np.full(len(trials), -1)
    assignment = np.empty(len(trials), dtype=object)
    for s in np.unique(stim):
        idx = np.flatnonzero(stim == s)
        if s in set(test_only_stimuli):
            assignment[idx] = "test"
            continue
        idx = rng.permutation(idx)
        counts = np.floor(np.asarray(fractions) * len(idx)).astype(int)
        if len(idx) >= 3:          # a split asked for gets at least one trial
            counts[1:] = np.where(np.asarray(fractions[1:]) > 0, np.maximum(counts[1:], 1), counts[1:])
        counts[0] = len(idx) - counts[1:].sum()
        for name, chunk in zip(SPLITS, np.split(idx, np.cumsum(counts)[:-1])):
            assignment[chunk] = name
    _fill_empty_splits(assignment, fractions, ~np.isin(stim, list(test_only_stimuli)), rng)
    return {name: union([(trials.start[i], trials.end[i]) for i in np.flatnonzero(assignment == name)])
            for name in SPLITS}


def _fill_empty_splits(assignment, fractions, movable, rng):
    """Give every split with a positive fraction at least one trial, moved from the split that
    holds the most `movable` ones, while that split keeps one (stimuli with too few trials each
    leave a split empty; with fewer trials than splits one stays empty, and training refuses an
    empty validation split)."""
    for name, fraction in zip(SPLITS, fractions):
        if fraction <= 0 or (assignment == name).any():
            continue
        sizes = {s: int(((assignment == s) & movable).sum()) for s in SPLITS if s != name}
        donor = max(sizes, key=sizes.get)
        if sizes[donor] and (assignment == donor).sum() >= 2:
            assignment[rng.choice(np.flatnonzero((assignment == donor) & movable))] = name


def has_events(data):
    """Whether a recording's spikes are events deconvolved from its calcium traces (data/calcium.py)."""
    return "deconvolution" in data.keys()


def assign_splits(data, fractions=(0.7, 0.1, 0.2), seed=0, test_only_stimuli=()):
    """Set train/valid/test domains: by trial when trials exist, else by contiguous time blocks;
    inside the span of the spikes when they are events deconvolved from traces (imaging may
    start after the recording does: no event there is no data, not silence)."""
    span = data.spikes.domain if has_events(data) else data.domain
    if "trials" in data.keys() and len(data.trials) > 0:
        splits = {k: v & span for k, v in split_by_trials(data.trials, fractions, seed, test_only_stimuli).items()}
    else:
        splits = split_by_time(span.start[0], span.end[-1], fractions)
    for name, interval in splits.items():
        setattr(data, f"{name}_domain", interval)
    return data


def check_split(split):
    """Raise an InputError unless `split` names one of SPLITS."""
    if split not in SPLITS:
        raise InputError("--split", ("split", f"unknown split {split!r} (one of {', '.join(SPLITS)})"))


def parse_split(text):
    """'0.7,0.1,0.2' -> (0.7, 0.1, 0.2), checked."""
    try:
        values = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not np.isfinite(values).all() or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise InputError("--split", ("split", f"expected three positive fractions summing to 1 "
                                               f"(train,valid,test), got {text!r}"))
    return values


def save_recording(data, path):
    """Write atomically: to a temporary name beside `path`, then rename."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        data.to_hdf5(f)
    return Path(path)


def open_recording(path):
    """Open lazily (nothing but metadata is read); close with `.file.close()` or `with`."""
    handle = open_hdf5(path)
    try:
        return Data.from_hdf5(handle, lazy=True)
    except Exception as err:  # a foreign HDF5 layout: say so instead of a deep trace
        handle.close()
        raise InputError(path, ("layout", f"not a recording file ({type(err).__name__}: {err})")) from None


def behavior_variables(data):
    """Names "group.field" of every behaviour variable in the recording."""
    if "behavior" not in data.keys():
        return []
    names = []
    for group in data.behavior.keys():
        series = getattr(data.behavior, group)
        names += [f"{group}.{k}" for k in series.keys() if k != "timestamps"]
    return names


def resolve_variable(data, name):
    """Full "group.field" name for `name`, which may also be a unique group or field name."""
    names = behavior_variables(data)
    if name in names:
        return name
    matches = [n for n in names if name in n.split(".")]
    if len(matches) == 1:
        return matches[0]
    raise KeyError(f"behaviour variable {name!r}: {'ambiguous' if matches else 'not found'}; "
                   f"the recording has {names or 'none'}")


MAX_CLASSES = 32


def class_count(values):
    """Number of classes K when behaviour `values` are class labels, else 0 (a quantity).

    Labels are stored as integers (or booleans) and take values 0..K-1 with K <= MAX_CLASSES:
    a grating direction stored as 0..7 is a label; stored as degrees, as floats, or with negative
    values it is a quantity, decoded by regression."""
    values = np.asarray(values)
    if values.dtype.kind not in "iub" or not values.size or values.min() < 0:
        return 0
    k = max(2, int(values.max()) + 1)
    return k if k <= MAX_CLASSES else 0


def movie_frame_dataset(data):
    """The HDF5 dataset of all movie frames, for partial reads (never loads the movie)."""
    frames = data.movies.__dict__["frames"]
    return frames if isinstance(frames, h5py.Dataset) else np.asarray(frames)


def spike_counts(data, start, end, bin_size):
    """Counts (T, N) of every unit in bins k of [start + k*bin, start + (k+1)*bin) (spike times
    floored onto the grid of multiples of `bin_size`; `start` is on that grid)."""
    k0, k1 = int(round(start / bin_size)), int(round(end / bin_size))
    window = data.spikes.slice(k0 * bin_size - bin_size, k1 * bin_size + bin_size, reset_origin=False)
    k = np.floor(np.asarray(window.timestamps) / bin_size + 1e-6).astype(np.int64) - k0
    keep = (k >= 0) & (k < k1 - k0)
    counts = np.zeros((k1 - k0, len(data.units.id)), dtype=np.int64)
    np.add.at(counts, (k[keep], np.asarray(window.unit_index)[keep]), 1)
    return counts


BIN_MARGIN = 0.01


def counts_to_spikes(counts, bin_size, seed=0, t_start=0.0):
    """(n_units, n_bins) counts -> sorted (times, unit_index): the c spikes of a bin
    [k*dt, (k+1)*dt) are placed independently and uniformly in [(k+0.01)*dt, (k+0.99)*dt), drawn
    from a generator seeded by `seed`, so re-binning at dt returns the counts exactly."""
    counts = np.asarray(counts)
    units, bins = np.nonzero(counts)
    reps = counts[units, bins].astype(np.int64)
    units, bins = np.repeat(units, reps), np.repeat(bins, reps)
    u = np.random.default_rng(seed).uniform(BIN_MARGIN, 1 - BIN_MARGIN, len(bins))
    times = t_start + (bins + u) * bin_size
    order = np.argsort(times, kind="stable")
    return times[order], units[order]


def frames_shown(data, times):
    """(index into the stored movie frames, onset time) of the frame shown at each time; -1 and
    NaN where none is."""
    index, onset = np.full(len(times), -1, dtype=np.int64), np.full(len(times), np.nan)
    if "stimulus" not in data.keys():
        return index, onset
    pres, table = data.stimulus, data.movie_table
    for s, e, m in zip(np.asarray(pres.start), np.asarray(pres.end), np.asarray(pres.movie_index)):
        on = (times >= s) & (times < e)
        i = np.minimum(np.floor((times[on] - s) * table.frame_rate[m] + 1e-9).astype(np.int64), table.n_frames[m] - 1)
        index[on], onset[on] = table.first_frame[m] + i, s + i / table.frame_rate[m]
    return index, onset


def behavior_values(data, name):
    """All samples of behaviour variable `name` (a full "group.field" name)."""
    group, field_name = name.split(".")
    return np.asarray(getattr(getattr(data.behavior, group), field_name))


def behavior_at(data, name, times):
    """The latest sample of behaviour variable `name` at each time (the first sample before it)."""
    group, field_name = resolve_variable(data, name).split(".")
    series = getattr(data.behavior, group)
    t, v = np.asarray(series.timestamps), np.asarray(getattr(series, field_name), dtype=np.float64)
    return v[np.clip(np.searchsorted(t, times, side="right") - 1, 0, len(v) - 1)]
