"""Calcium traces and spike-like events: a forward model from spikes to ΔF/F, and deconvolution
of ΔF/F back into events, so that a calcium recording is trained on, scored, simulated and
decoded as spikes (docs/import.md, "Calcium imaging").

Forward model (`CalciumModel`), per unit and imaging frame k (frames of 1/rate s, each read at
its end): calcium c_k = g·c_{k−1} + Σ over the frame's spikes of exp(−(end of frame − spike)/τ),
g = exp(−1/(rate·τ)) (the first-order indicator model OASIS inverts); ΔF/F = amplitude·c /
(1 + c/kd) (saturation: half the linear response at kd spikes' worth of calcium); shot noise:
a frame's photons are Poisson with mean photons·(1 + ΔF/F).

Events (`deconvolve`): each trace is deconvolved by OASIS (Friedrich, Zhou & Paninski 2017,
PyPI `oasis-deconv`: the first-order model above; decay, baseline and noise fitted per ROI,
the decay refined on isolated events; L1 sparsity under the noise constraint), giving a
non-negative activity per frame in ΔF/F. Divided by the activity of one event
(`spike_amplitude`), it becomes whole events by error diffusion (the running sum, rounded, emits
an event each time it reaches the next integer, so the events add up to the activity and fall in
the frames that carry it); a frame's events are placed inside it by the rule of binned counts
(`recording.counts_to_spikes`).
"""
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.signal import lfilter
from tqdm import tqdm

from ..errors import InputError
from .imaging import calcium_series
from .objects import ArrayDict, Interval, IrregularTimeSeries
from .recording import counts_to_spikes
from .validate import check_calcium

OPTIMIZE_G = 5            # OASIS refines each ROI's decay on its 5 largest isolated events (the autocovariance
                          # estimate alone is biased on sparse traces: 0.914 for a true 0.954 per frame)
MIN_FRAMES = 100          # shortest trace deconvolved (OASIS estimates the noise from its spectrum)
SPIKE_AMPLITUDE = 0.07    # default OASIS activity (ΔF/F) of one event: saturation at steady firing and the L1
                          # penalty shrink a spike's jump; 1.16 events per true spike on the synthetic recording


@dataclass
class CalciumModel:
    rate: float = 30.0          # imaging frame rate (Hz)
    tau: float = 0.7            # indicator decay (s): GCaMP6s about 1 s, GCaMP6f about 0.4 s
    amplitude: float = 0.2      # ΔF/F of one spike, far from saturation
    kd: float = 10.0            # spikes' worth of calcium at which the response is half the linear one
    photons: float = 500.0      # photons of a frame at baseline (shot noise s.d. 1/sqrt(photons) in ΔF/F)


def calcium_from_spikes(times, units, n_units, n_frames, model, start=0.0):
    """Noise-free calcium (n_frames, n_units), in spikes' worth, of spikes at `times` of `units`."""
    times = np.asarray(times, dtype=np.float64)
    frame = np.floor((times - start) * model.rate + 1e-9).astype(np.int64)
    influx = per_frame(times, units, n_units, n_frames, model.rate, start,
                       np.exp(-(start + (frame + 1) / model.rate - times) / model.tau))
    return lfilter([1.0], [1.0, -np.exp(-1.0 / (model.rate * model.tau))], influx, axis=0)


def per_frame(times, units, n_units, n_frames, rate, start, weights=None):
    """(n_frames, n_units) sums of `weights` (default 1) of events at `times` of `units` over the
    frames of 1/rate s from `start`; events outside them are left out."""
    times, units = np.asarray(times, dtype=np.float64), np.asarray(units, dtype=np.int64)
    frame = np.floor((times - start) * rate + 1e-9).astype(np.int64)
    keep = (frame >= 0) & (frame < n_frames)
    out = np.zeros((n_frames, n_units))
    np.add.at(out, (frame[keep], units[keep]), 1.0 if weights is None else np.asarray(weights)[keep])
    return out


def traces_from_spikes(times, units, n_units, n_frames, model, rng, start=0.0):
    """ΔF/F traces (n_frames, n_units) float32 of spikes through `model`, with shot noise from `rng`."""
    c = calcium_from_spikes(times, units, n_units, n_frames, model, start)
    dff = model.amplitude * c / (1.0 + c / model.kd)
    return (rng.poisson(model.photons * (1.0 + dff)) / model.photons - 1.0).astype(np.float32)


def with_calcium(data, truth, model, seed=0):
    """A spiking recording turned into a calcium one: its spikes replaced by their ΔF/F traces
    from the domain's start; the spikes and the model join the ground truth `truth`."""
    times, units = np.asarray(data.spikes.timestamps), np.asarray(data.spikes.unit_index)
    start, end = float(data.domain.start[0]), float(data.domain.end[-1])
    n_frames = int(np.floor((end - start) * model.rate + 1e-9))
    traces = traces_from_spikes(times, units, len(data.units.id), n_frames, model,
                                np.random.default_rng(seed), start)
    data.calcium = calcium_series(traces, model.rate, start)
    data.spikes = IrregularTimeSeries(timestamps=np.zeros(0), unit_index=np.zeros(0, dtype=np.int64),
                                      domain=data.spikes.domain)
    return data, {**truth, "spike_times": times, "spike_units": units,
                  "calcium_model": np.asarray(str(asdict(model)))}


def traces_from_events(times, units, fits, rate, start, n_frames, rng=None):
    """ΔF/F (n_frames, ROIs) that events at `times` of `units` would give through each ROI's
    fitted indicator (`deconvolution`: decay per frame g, baseline b, noise s.d., event
    amplitude A): the model OASIS inverts, y_k = b + c_k + noise, c_k = g·c_{k−1} + A·(events
    in frame k), frames of 1/rate s from `start`; without `rng`, no noise."""
    decay, amplitude = np.asarray(fits.decay), np.asarray(fits.spike_amplitude)
    events = per_frame(times, units, len(decay), n_frames, rate, start)
    calcium = np.stack([lfilter([a], [1.0, -g], events[:, i]) for i, (g, a) in enumerate(zip(decay, amplitude))], 1)
    noise = 0.0 if rng is None else rng.standard_normal(calcium.shape) * np.asarray(fits.noise)
    return (np.asarray(fits.baseline) + calcium + noise).astype(np.float32)


def deconvolve(traces, spike_amplitude=SPIKE_AMPLITUDE, progress=False):
    """OASIS activity (frames, ROIs) of ΔF/F `traces`, whole events per frame (error diffusion of
    activity / `spike_amplitude`, rounded), and each ROI's fit: decay per frame, baseline, noise
    s.d. Deterministic: OASIS's occasional random draws come from a fixed seed."""
    from oasis.functions import deconvolve as oasis

    traces = np.asarray(traces, dtype=np.float64)
    activity = np.zeros(traces.shape)
    fits = {"decay": [], "baseline": [], "noise": []}
    state = np.random.get_state()
    np.random.seed(0)                  # OASIS redraws an implausible decay from numpy's global generator
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for i in tqdm(range(traces.shape[1]), desc="deconvolving", unit="ROI", disable=not progress):
                fit = oasis(traces[:, i], penalty=1, optimize_g=OPTIMIZE_G)
                activity[:, i] = np.maximum(fit[1], 0.0)
                fits["decay"].append(float(np.ravel(fit[3])[0]))
                fits["baseline"].append(float(fit[2]))
                fits["noise"].append(float(np.std(traces[:, i] - fit[0] - fit[2])))
    finally:
        np.random.set_state(state)
    passed = np.floor(np.cumsum(activity / spike_amplitude, axis=0) + 0.5)
    events = np.diff(passed, axis=0, prepend=0.0)
    return activity, events, {k: np.asarray(v) for k, v in fits.items()}


def with_events(data, spike_amplitude=SPIKE_AMPLITUDE, seed=0, source="recording"):
    """A calcium recording whose spikes are its deconvolved events (`deconvolve`), over the span
    of its traces; the traces stay, and `deconvolution` holds each ROI's fit and the amplitude."""
    if "calcium" not in data.keys():
        raise InputError(source, ("calcium", "no calcium traces to deconvolve into events"))
    if len(data.spikes.timestamps):
        raise InputError(source, ("spikes", f"the recording has {len(data.spikes.timestamps)} spikes already; "
                                            "events would replace them"))
    if not (isinstance(spike_amplitude, (int, float)) and 0 < spike_amplitude < np.inf):
        raise InputError("--spike-amplitude", ("spike amplitude", f"must be a positive ΔF/F, got {spike_amplitude!r}"))
    series = data.calcium
    traces, rate = np.asarray(series.dff), float(series.sampling_rate)
    problems = []
    check_calcium(series, data.units.id, float(data.domain.start[0]), float(data.domain.end[-1]), problems)
    if len(traces) < MIN_FRAMES:
        problems.append(("calcium.dff", f"{len(traces)} frames: deconvolution needs at least {MIN_FRAMES}"))
    if problems:
        raise InputError(source, problems[0])
    activity, events, fits = deconvolve(traces, spike_amplitude, progress=traces.shape[1] * len(traces) > 1e7)
    bad = np.flatnonzero(~np.isfinite(activity).all(0))
    if len(bad):
        raise InputError(source, ("calcium.dff", f"deconvolution failed for ROI(s) {bad[:5].tolist()}"))
    if events.max() > max(1, int(1000 / rate)):             # more than one event per millisecond
        raise InputError("--spike-amplitude", ("spike amplitude", f"{spike_amplitude:g} ΔF/F puts up to "
                                               f"{int(events.max())} events in one {1000 / rate:.3g} ms frame: "
                                               "far too small for this activity"))
    if events.sum() == 0:
        raise InputError("--spike-amplitude", ("spike amplitude", f"{spike_amplitude:g} ΔF/F gives no event (the "
                                               f"largest activity in a frame is {activity.max():.3g} ΔF/F)"))
    start = float(series.domain.start[0])
    span = Interval(start, start + len(traces) / rate)
    times, units = counts_to_spikes(events.T.astype(np.int64), 1.0 / rate, seed=seed, t_start=start)
    data.spikes = IrregularTimeSeries(timestamps=times, unit_index=units, domain=span)
    data.deconvolution = ArrayDict(**fits, spike_amplitude=np.full(traces.shape[1], float(spike_amplitude)))
    return data
