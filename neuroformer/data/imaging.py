"""Calcium imaging: traces of regions of interest (ROIs) from NWB ophys data, a suite2p output
folder or an array dictionary, stored as the recording's `calcium` series (docs/design.md §1).

A stored trace is ΔF/F at the imaging frame rate, one column per ROI; the ROIs are the
recording's units. From raw fluorescence F (suite2p, NWB `Fluorescence`) it is
(F − F0) / F0 with F0 the 10th percentile of the whole trace, after subtracting 0.7 × the
neuropil trace when there is one (suite2p's own default coefficient); NWB `DfOverF` series are
stored as they are.
"""
from pathlib import Path

import numpy as np

from ..errors import InputError
from .objects import RegularTimeSeries
from .recording import make_recording

NEUROPIL = 0.7              # suite2p's default neuropil coefficient
RATES = (0.01, 10_000.0)    # Hz: imaging frame rates outside this range are an error
BASELINE_PERCENTILE = 10    # F0 of ΔF/F
SUITE2P_FILES = ("F.npy", "Fneu.npy", "iscell.npy")


def delta_f_over_f(f, neuropil=None, source="traces", field="F"):
    """(T, N) ΔF/F of fluorescence `f` (T, N), `neuropil` (T, N) subtracted first (× NEUROPIL)."""
    f = np.asarray(f, dtype=np.float64)
    if neuropil is not None:
        f = f - NEUROPIL * np.asarray(neuropil, dtype=np.float64)
    f0 = np.percentile(f, BASELINE_PERCENTILE, axis=0)
    dark = np.flatnonzero(~(f0 > 0))
    if len(dark):
        raise InputError(source, (field, f"{len(dark)} ROI(s) have a baseline fluorescence <= 0"
                                         f"{' after neuropil correction' if neuropil is not None else ''} "
                                         f"(columns {dark[:5].tolist()}): ΔF/F is undefined"))
    return (f / f0 - 1.0).astype(np.float32)


def checked_rate(rate, source, field):
    """A frame rate in Hz (a real number within RATES) as a float, else an InputError."""
    lo, hi = RATES
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not lo <= float(rate) <= hi:
        raise InputError(source, (field, f"must be a frame rate in [{lo:g}, {hi:g}] Hz, got "
                                         f"{float(rate) if isinstance(rate, (np.integer, np.floating)) else rate!r}"))
    return float(rate)


def real_matrix(values, source, field, layout):
    """`values` as a float64 matrix of finite real numbers within float32's range, at least one
    along each axis, else an InputError; `layout` names the axes, e.g. "(ROIs, frames)"."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf":
        raise InputError(source, (field, f"expected real numbers {layout}, got dtype {values.dtype}"))
    if values.ndim != 2 or 0 in values.shape:
        raise InputError(source, (field, f"expected a matrix {layout}, got shape {values.shape}"))
    values = values.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(source, (field, f"{int(bad.sum())} NaN or infinite values"))
    if np.abs(values).max() > np.finfo(np.float32).max:
        raise InputError(source, (field, "values beyond the float32 range"))
    return values


def calcium_series(traces, rate, start=0.0):
    """The recording's `calcium` group: ΔF/F `traces` (T, N) sampled at `rate` Hz from `start` s."""
    return RegularTimeSeries(dff=np.asarray(traces, dtype=np.float32), sampling_rate=float(rate),
                             domain_start=float(start))


def binned_traces(data, start, end, bin_size):
    """(n_bins, n_units) mean ΔF/F of the imaging frames whose times fall in each bin of
    [start, end); a bin that holds no frame's start takes the frame shown at its centre."""
    series = data.calcium
    rate, first = float(series.sampling_rate), float(series.domain.start[0])
    n_bins = int(round((end - start) / bin_size))
    i0 = max(0, int(np.floor((start - first) * rate)) - 1)              # the frames this span can use
    i1 = min(len(series.dff), int(np.ceil((start + n_bins * bin_size - first) * rate)) + 1)
    dff = np.asarray(series.dff[i0:max(i1, i0 + 1)], dtype=np.float64)
    times = first + (i0 + np.arange(len(dff))) / rate
    inside = np.flatnonzero((times >= start) & (times < start + n_bins * bin_size))
    k = np.minimum(np.floor((times[inside] - start) / bin_size + 1e-9).astype(np.int64), n_bins - 1)
    sums, counts = np.zeros((n_bins, dff.shape[1])), np.bincount(k, minlength=n_bins)
    np.add.at(sums, k, dff[inside])
    out = sums / np.maximum(counts, 1)[:, None]
    empty = np.flatnonzero(counts == 0)
    frame = np.floor((start + (empty + 0.5) * bin_size - times[0]) * rate + 1e-9)
    out[empty] = dff[np.clip(frame.astype(np.int64), 0, len(dff) - 1)]
    return out


def imaging_parts(traces, rate, roi_ids, session):
    """`make_recording` arguments of ΔF/F `traces` (T, N) from 0 s, without spikes: ROIs are the units."""
    return dict(spike_times=np.zeros(0), spike_units=np.zeros(0, dtype=np.int64), session_id=session,
                unit_ids=[f"{session}/{r}" for r in roi_ids], domain=(0.0, len(traces) / float(rate)),
                calcium=calcium_series(traces, rate))


# ---------------------------------------------------------------- suite2p

def import_suite2p(folder, rate=None, allow_pickle=False):
    """A suite2p output folder (a `plane*` folder holding F.npy, Fneu.npy, iscell.npy) -> a
    recording of the ΔF/F of its accepted cells; ROI ids are suite2p's ROI indices. The frame
    rate is `rate` (Hz), else ops.npy's `fs`, read only with `allow_pickle` (ops.npy is a pickle)."""
    folder = Path(folder)
    try:
        missing = [name for name in SUITE2P_FILES if not (folder / name).is_file()]
    except OSError as err:
        raise InputError(folder, ("suite2p", f"cannot read the folder ({err.strerror or err})")) from None
    if missing:
        raise InputError(folder, ("suite2p", f"missing {', '.join(missing)} (expected a suite2p plane folder)"))
    f, fneu = (real_matrix(_npy(folder / name), folder / name, field, "(ROIs, frames)")
               for name, field in (("F.npy", "F"), ("Fneu.npy", "Fneu")))
    if fneu.shape != f.shape:
        raise InputError(folder / "Fneu.npy", ("Fneu", f"shape {fneu.shape} differs from F.npy's {f.shape}"))
    iscell = _npy(folder / "iscell.npy")
    if iscell.dtype.kind not in "biuf" or iscell.ndim not in (1, 2) or (iscell.ndim == 2 and iscell.shape[1] < 1) \
            or len(iscell) != len(f):
        raise InputError(folder / "iscell.npy", ("iscell", f"expected {len(f)} rows of numbers (ROIs[, 2]), got "
                                                           f"{iscell.dtype} {iscell.shape}"))
    keep = np.flatnonzero((iscell[:, 0] if iscell.ndim == 2 else iscell).astype(float) > 0.5)
    if not len(keep):
        raise InputError(folder / "iscell.npy", ("iscell", "no ROI is classified as a cell"))
    rate = checked_rate(rate, "--imaging-rate", "imaging rate") if rate is not None else _suite2p_rate(folder, allow_pickle)
    traces = delta_f_over_f(f[keep].T, fneu[keep].T, folder / "F.npy")
    session = folder.name if not folder.name.startswith("plane") else f"{folder.resolve().parent.name}_{folder.name}"
    return make_recording(**imaging_parts(traces, rate, [f"roi{i}" for i in keep], session))


def _npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise InputError(path, ("file", f"cannot read ({type(err).__name__}: {err})")) from None


def _suite2p_rate(folder, allow_pickle):
    ops = folder / "ops.npy"
    if not allow_pickle or not ops.is_file():
        raise InputError(folder, ("imaging rate", "give --imaging-rate HZ (ops.npy holds it, but it is a pickle: "
                                                  "--allow-pickle reads it, for folders you trust)"))
    try:
        fs = np.load(ops, allow_pickle=True).item()["fs"]
    except Exception as err:
        raise InputError(ops, ("fs", f"cannot read the frame rate ({type(err).__name__}: {err})")) from None
    return checked_rate(fs, ops, "fs")


# ---------------------------------------------------------------- NWB ophys

def nwb_traces(nwb, path):
    """(traces (T, N) ΔF/F, rate, start, ROI ids) of an NWB file's RoiResponseSeries: those in
    DfOverF, else those in Fluorescence (ΔF/F computed); several planes must share their timing.
    None when the file holds none."""
    from pynwb.ophys import DfOverF, Fluorescence, RoiResponseSeries

    found = [s for s in nwb.objects.values() if isinstance(s, RoiResponseSeries)]
    series = [s for s in found if isinstance(s.parent, DfOverF)] or [s for s in found if isinstance(s.parent, Fluorescence)]
    if not series:
        return None
    timings, columns, ids = [], [], []
    for s in series:
        data = np.asarray(s.data[:])
        data = real_matrix(data[:, None] if data.ndim == 1 else data, path, f"ophys {s.name}", "(frames, ROIs)")
        rows, n_rois = np.asarray(s.rois.data[:]), len(s.rois.table)
        if data.shape[1] != len(rows):
            raise InputError(path, (f"ophys {s.name}", f"data of shape {data.shape} for {len(rows)} ROIs"))
        if rows.dtype.kind not in "iu" or len(rows) and (rows.min() < 0 or rows.max() >= n_rois):
            raise InputError(path, (f"ophys {s.name}", f"ROI rows outside the segmentation's {n_rois}"))
        timings.append((*_nwb_timing(s, len(data), path), len(data)))
        columns.append(data if isinstance(s.parent, DfOverF) else delta_f_over_f(data, None, path, f"ophys {s.name}"))
        table_ids = np.asarray(s.rois.table.id[:])[rows]
        ids += [f"{s.rois.table.name}/{i}" if len(series) > 1 else str(i) for i in table_ids]
    if any(not np.allclose(t, timings[0]) for t in timings):
        raise InputError(path, ("ophys", f"planes differ in timing (rate, start, frames): {timings}"))
    rate, start, _ = timings[0]
    return np.concatenate(columns, 1), rate, start, ids


def _nwb_timing(series, n, path):
    """(rate, start) of a series: its rate, or regular timestamps."""
    if series.rate is not None:
        start = series.starting_time or 0.0
        if not np.isfinite(float(start)):
            raise InputError(path, (f"ophys {series.name}", f"starting_time must be finite, got {start}"))
        return checked_rate(series.rate, path, f"ophys {series.name}.rate"), float(start)
    stamps = np.asarray(series.timestamps[:]) if series.timestamps is not None else np.zeros(0)
    stamps = stamps.astype(np.float64) if stamps.dtype.kind in "iuf" else np.zeros(0)
    steps = np.diff(stamps)
    if len(stamps) != n or n < 2 or not np.isfinite(stamps).all() or not (steps > 0).all():
        raise InputError(path, (f"ophys {series.name}", "needs a rate or increasing timestamps, one per frame"))
    if np.abs(steps - np.median(steps)).max() > 0.01 * np.median(steps):
        raise InputError(path, (f"ophys {series.name}", f"irregular timestamps (steps {steps.min():.4g} to "
                                                        f"{steps.max():.4g} s): imaging frames must be evenly spaced"))
    return checked_rate(1.0 / float(np.median(steps)), path, f"ophys {series.name}.timestamps"), float(stamps[0])
