"""A summary of a recording file: units, spikes, rates, duration, modalities, trials, splits."""
import numpy as np

from ..errors import InputError
from .recording import SPLITS, behavior_variables, has_events, open_recording
from .validate import check


def summarize(path):
    """Plain-dict summary of the recording at `path` (reads metadata and spike arrays only); an
    invalid recording is an InputError listing its problems."""
    data = open_recording(path)
    try:
        problems = check(data)
        if problems:
            raise InputError(path, problems)
        keys = data.keys()
        times = np.asarray(data.spikes.timestamps)
        units = np.asarray(data.spikes.unit_index)
        n_units = len(data.units)
        start, end = float(data.domain.start[0]), float(data.domain.end[-1])
        duration = float((data.domain.end - data.domain.start).sum())
        counts = np.bincount(units, minlength=n_units)
        out = {
            "file": str(path),
            "session": str(data.session.id),
            "units": n_units,
            "spikes": int(len(times)),
            "spikes_per_unit": {str(u): int(c) for u, c in zip(data.units.id, counts)} if n_units <= 20 else None,
            "mean_rate_hz": float(len(times) / max(duration, 1e-12) / max(n_units, 1)),
            "duration_s": duration,
            "domain_s": [start, end],
            "spike_span_s": [float(times[0]), float(times[-1])] if len(times) else None,
            "calcium": ({"rois": int(data.calcium.dff.shape[1]), "frames": int(data.calcium.dff.shape[0]),
                         "rate_hz": float(data.calcium.sampling_rate),
                         "events": ({"spike_amplitude": float(np.max(data.deconvolution.spike_amplitude))}
                                    if has_events(data) and len(data.deconvolution.spike_amplitude)
                                    else None)} if "calcium" in keys else None),
            "behavior": behavior_variables(data),
            "trials": int(len(data.trials)) if "trials" in keys else 0,
            "movies": ([{"id": str(i), "frames": int(n), "frame_rate": float(r)} for i, n, r in
                        zip(data.movie_table.id, data.movie_table.n_frames, data.movie_table.frame_rate)]
                       if "movie_table" in keys else []),
            "presentations": int(len(data.stimulus)) if "stimulus" in keys else 0,
            "splits": {},
        }
        for name in SPLITS:
            dom = getattr(data, f"{name}_domain") if f"{name}_domain" in keys else None
            if dom is not None:
                out["splits"][name] = {"intervals": int(len(dom)), "seconds": float((dom.end - dom.start).sum())}
        return out
    finally:
        data.file.close()


def format_summary(s):
    """Human-readable lines for `summarize`'s dict."""
    lines = [
        f"file      {s['file']}",
        f"session   {s['session']}",
        f"units     {s['units']}",
        f"spikes    {s['spikes']}  (mean rate {s['mean_rate_hz']:.3g} Hz per unit)",
        f"duration  {s['duration_s']:.6g} s  domain [{s['domain_s'][0]:.6g}, {s['domain_s'][1]:.6g}] s",
    ]
    if s["spike_span_s"]:
        lines.append(f"spikes in [{s['spike_span_s'][0]:.6g}, {s['spike_span_s'][1]:.6g}] s")
    if s["spikes_per_unit"]:
        lines.append("per unit  " + ", ".join(f"{u}: {c}" for u, c in s["spikes_per_unit"].items()))
    if s.get("calcium"):
        c = s["calcium"]
        lines.append(f"calcium   ΔF/F of {c['rois']} ROIs, {c['frames']} frames at {c['rate_hz']:g} Hz"
                     + (f"; the spikes are its deconvolved events ({c['events']['spike_amplitude']:g} ΔF/F each)"
                        if c.get("events") else "" if s["spikes"] else
                        "; no spikes (`prepare --events` deconvolves the traces)"))
    lines.append(f"behaviour {', '.join(s['behavior']) or 'none'}")
    movies = ", ".join(f"{m['id']} ({m['frames']} frames at {m['frame_rate']:g} Hz)" for m in s["movies"])
    lines.append(f"stimulus  {movies or 'none'}; {s['presentations']} presentations")
    lines.append(f"trials    {s['trials']}")
    for name, d in s["splits"].items():
        lines.append(f"{name:<9} {d['intervals']} intervals, {d['seconds']:.6g} s")
    return "\n".join(lines)
