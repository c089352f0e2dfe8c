"""Validate a recording against the schema (docs/design.md §1), reporting every problem at once.

`check(data)` returns a list of (field, problem); `validate_file(path)` raises `InputError`
naming the file with all of them. Importers run `check` before anything is written, because
torch_brain sorts an unsorted series in place when it saves (with only a log line).
"""
import numpy as np

from ..errors import InputError
from .objects import IrregularTimeSeries, RegularTimeSeries
from .recording import SPLITS, open_recording


def _array(obj, key):
    """The array `key` of a (possibly lazy) ArrayDict, loading it."""
    return np.asarray(getattr(obj, key))


def _shape_dtype(obj, key):
    value = obj.__dict__[key]  # h5py.Dataset when lazy: shape and dtype without reading
    return tuple(value.shape), np.dtype(value.dtype)


def _finite(field, values, problems):
    if values.dtype.kind not in "fiu":
        problems.append((field, f"expected numbers, got dtype {values.dtype}"))
        return False
    bad = ~np.isfinite(values.astype(np.float64, copy=False))
    if bad.any():
        problems.append((field, f"{int(bad.sum())} NaN or infinite values (first at index {int(np.argmax(bad))})"))
        return False
    return True


def _sorted(field, times, problems):
    steps = np.diff(times) < 0
    if steps.any():
        i = int(np.argmax(steps))
        problems.append((field, f"not sorted: {int(steps.sum())} decreasing steps, first at index {i + 1} "
                                f"({times[i + 1]!r} after {times[i]!r})"))


def _within(field, starts, ends, lo, hi, problems, tol=1e-9):
    if len(starts) and (np.min(starts) < lo - tol or np.max(ends) > hi + tol):
        problems.append((field, f"extends over [{np.min(starts):.6g}, {np.max(ends):.6g}] s, "
                                f"outside the recording domain [{lo:.6g}, {hi:.6g}] s"))


def _check_intervals(field, interval, lo, hi, problems, disjoint=True):
    start, end = _array(interval, "start"), _array(interval, "end")
    if not (_finite(f"{field}.start", start, problems) and _finite(f"{field}.end", end, problems)):
        return
    if (end < start).any():
        problems.append((f"{field}.end", f"{int((end < start).sum())} intervals end before they start"))
    _sorted(f"{field}.start", start, problems)
    if disjoint and len(start) > 1 and (start[1:] < end[:-1] - 1e-9).any():
        problems.append((field, "intervals overlap"))
    _within(field, start, end, lo, hi, problems)


def check(data):
    """Every problem of a recording `Data` object, as a list of (field, problem)."""
    problems = []
    keys = set(data.keys())
    for required in ("spikes", "units"):
        if required not in keys:
            problems.append((required, "missing"))
    if data.domain is None or len(data.domain) == 0:
        return problems + [("domain", "missing")]
    lo, hi = float(data.domain.start[0]), float(data.domain.end[-1])
    if not hi > lo:
        problems.append(("domain", f"empty or reversed: [{lo}, {hi}]"))

    n_units = 0
    if "units" in keys:
        ids = _array(data.units, "id").astype(str)
        n_units = len(ids)
        if n_units == 0:
            problems.append(("units.id", "no units"))
        if (np.char.str_len(ids) == 0).any():
            problems.append(("units.id", "empty unit id"))
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            problems.append(("units.id", f"duplicate unit ids: {[str(u) for u in uniq[counts > 1][:5]]}"))

    if "spikes" in keys:
        _check_spikes(data.spikes, n_units, lo, hi, problems)

    n_movies = len(data.movie_table) if "movie_table" in keys else 0
    if "trials" in keys:
        _check_intervals("trials", data.trials, lo, hi, problems)
        if "stimulus_id" in data.trials.keys():
            stim = _array(data.trials, "stimulus_id")
            if ((stim < -1) | (stim >= n_movies)).any():
                problems.append(("trials.stimulus_id", f"values outside [-1, {n_movies}) (movies stored: {n_movies})"))

    if "movies" in keys:
        shape, dtype = _shape_dtype(data.movies, "frames")
        if len(shape) not in (3, 4) or dtype != np.uint8:
            problems.append(("movies.frames", f"expected uint8 (frames, height, width[, 3]), got {dtype} {shape}"))
        first = _array(data.movie_table, "first_frame")
        count = _array(data.movie_table, "n_frames")
        rate = _array(data.movie_table, "frame_rate")
        if len(first) and (first + count).max() > shape[0]:
            problems.append(("movie_table.n_frames", f"movies need {(first + count).max()} frames, {shape[0]} stored"))
        if _finite("movie_table.frame_rate", rate, problems) and (rate <= 0).any():
            problems.append(("movie_table.frame_rate", "must be positive"))
        if "stimulus" not in keys:
            problems.append(("stimulus", "movies are stored but no presentation says when they were shown"))
    if "stimulus" in keys:
        _check_intervals("stimulus", data.stimulus, lo, hi, problems)
        index = _array(data.stimulus, "movie_index")
        if ((index < 0) | (index >= n_movies)).any():
            problems.append(("stimulus.movie_index", f"values outside [0, {n_movies}) (movies stored: {n_movies})"))

    if "calcium" in keys:
        check_calcium(data.calcium, data.units.id if "units" in keys else [], lo, hi, problems)

    if "behavior" in keys:
        for group in data.behavior.keys():
            _check_series(f"behavior.{group}", getattr(data.behavior, group), lo, hi, problems)

    for name in SPLITS:
        field = f"{name}_domain"
        if field not in keys:
            problems.append((field, "missing (splits are by trial or by time block)"))
        else:
            _check_intervals(field, getattr(data, field), lo, hi, problems)
    present = [getattr(data, f"{s}_domain") for s in SPLITS if f"{s}_domain" in keys]
    for i in range(len(present)):
        for j in range(i + 1, len(present)):
            if len(present[i]) and len(present[j]) and _overlap(present[i], present[j]) > 1e-9:
                problems.append((f"{SPLITS[i]}_domain", f"overlaps {SPLITS[j]}_domain by "
                                                       f"{_overlap(present[i], present[j]):.6g} s"))
    return problems


def _chunks(obj, key, size=1 << 20):
    """(offset, array) pieces of `key`, read piece by piece when lazy: memory stays flat."""
    source = obj.__dict__.get(key)
    source = np.asarray(getattr(obj, key)) if source is None or isinstance(source, np.ndarray) else source
    for a in range(0, max(len(source), 1), size):
        yield a, np.asarray(source[a:a + size])


def _check_spikes(spikes, n_units, lo, hi, problems):
    """Spike checks in bounded memory (the spike arrays are the only large ones)."""
    n_times, n_indices = (len(spikes.__dict__[k]) for k in ("timestamps", "unit_index"))
    if n_times != n_indices:
        problems.append(("spikes.unit_index", f"{n_indices} values for {n_times} spikes.timestamps"))
        return
    nan = desc = bad_unit = 0
    first_nan = first_desc = example_unit = None
    prev, t_min, t_max = -np.inf, np.inf, -np.inf
    for a, t in _chunks(spikes, "timestamps"):
        if t.dtype.kind not in "fiu":
            problems.append(("spikes.timestamps", f"expected numbers, got dtype {t.dtype}"))
            return
        finite = np.isfinite(t)
        if not finite.all():
            nan += int((~finite).sum())
            first_nan = a + int(np.argmax(~finite)) if first_nan is None else first_nan
        t = np.where(finite, t, np.nan)
        steps = np.diff(np.concatenate([[prev], t])) < 0
        if steps.any():
            desc += int(steps.sum())
            if first_desc is None:
                i = int(np.argmax(steps))
                first_desc = (a + i, t[i], prev if i == 0 else t[i - 1])
        if len(t):
            prev = t[-1]
            t_min, t_max = min(t_min, np.nanmin(t, initial=np.inf)), max(t_max, np.nanmax(t, initial=-np.inf))
    for a, u in _chunks(spikes, "unit_index"):
        if u.dtype.kind not in "iu":
            problems.append(("spikes.unit_index", f"expected integers, got dtype {u.dtype}"))
            break
        bad = (u < 0) | (u >= n_units)
        if bad.any():
            bad_unit += int(bad.sum())
            example_unit = int(u[bad][0]) if example_unit is None else example_unit
    if nan:
        problems.append(("spikes.timestamps", f"{nan} NaN or infinite values (first at index {first_nan})"))
    if desc:
        i, now, before = first_desc
        problems.append(("spikes.timestamps", f"not sorted: {desc} decreasing steps, first at index {i} "
                                              f"({now!r} after {before!r})"))
    if t_max >= t_min:
        _within("spikes.timestamps", [t_min], [t_max], lo, hi, problems)
    if bad_unit:
        problems.append(("spikes.unit_index", f"{bad_unit} values outside [0, {n_units}) "
                                              f"(e.g. {example_unit}); units has {n_units} ids"))


def _overlap(a, b):
    total = 0.0
    for s1, e1 in zip(a.start, a.end):
        total += float(np.clip(np.minimum(e1, b.end) - np.maximum(s1, b.start), 0, None).sum())
    return total


def _check_series(field, series, lo, hi, problems):
    if not isinstance(series, (RegularTimeSeries, IrregularTimeSeries)):
        problems.append((field, f"expected a time series, got {type(series).__name__}"))
        return
    for key in series.keys():
        if key == "timestamps":
            continue
        _finite(f"{field}.{key}", _array(series, key), problems)
    if isinstance(series, IrregularTimeSeries):
        times = _array(series, "timestamps")
        if _finite(f"{field}.timestamps", times, problems):
            _sorted(f"{field}.timestamps", times, problems)
            _within(f"{field}.timestamps", times, times, lo, hi, problems)
        return
    start, end, rate = float(series.domain.start[0]), float(series.domain.end[-1]), series.sampling_rate
    if not (abs(start - lo) <= 1 / rate and abs(end - hi) <= 1 / rate):
        expected = int(round((hi - lo) * rate))
        problems.append((field, f"wrong length: {len(series)} samples at {rate:g} Hz from {start:g} s cover "
                                f"[{start:g}, {end:g}) s, but the recording is [{lo:g}, {hi:g}) s "
                                f"(expected {expected} samples from {lo:g} s)"))


def check_calcium(series, unit_ids, lo, hi, problems):
    """ΔF/F traces: one column per unit, finite, each ROI varying, inside the recording."""
    if not isinstance(series, RegularTimeSeries) or "dff" not in series.keys():
        problems.append(("calcium", "expected a regular time series with field dff (frames, units)"))
        return
    rate = series.sampling_rate
    if not (np.isfinite(rate) and rate > 0):
        problems.append(("calcium.sampling_rate", f"must be a positive frame rate, got {rate}"))
        return
    shape, _ = _shape_dtype(series, "dff")
    if len(shape) != 2 or shape[1] != len(unit_ids):
        problems.append(("calcium.dff", f"expected (frames, {len(unit_ids)} units), got shape {tuple(shape)}"))
        return
    traces = _array(series, "dff")
    if not _finite("calcium.dff", traces, problems):
        return
    start, end = float(series.domain.start[0]), float(series.domain.end[-1])
    if start < lo - 1 / rate or end > hi + 1 / rate:
        problems.append(("calcium", f"{len(traces)} frames at {rate:g} Hz from {start:g} s end at {end:g} s, "
                                    f"outside the recording [{lo:g}, {hi:g}) s"))
    flat = np.flatnonzero(traces.std(axis=0) == 0) if len(traces) else []
    if len(flat):
        problems.append(("calcium.dff", f"{len(flat)} ROI(s) without variance (a constant trace): "
                                        f"{[str(u) for u in np.asarray(unit_ids)[flat][:5]]}"))


def require_finite(field, values, source):
    """Raise before building a series from `values`: torch_brain asserts on NaN timestamps."""
    problems = []
    _finite(field, np.asarray(values), problems)
    if problems:
        raise InputError(source, problems)


def validate_file(path):
    """Open `path` and raise InputError listing every problem; returns None when valid."""
    data = open_recording(path)
    try:
        problems = check(data)
    finally:
        data.file.close()
    if problems:
        raise InputError(path, problems)


def require_valid(data, source):
    """Raise InputError(source, problems) if the in-memory recording has any problem."""
    problems = check(data)
    if problems:
        raise InputError(source, problems)
    return data

