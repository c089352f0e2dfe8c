"""Simulated trials against the held-out recorded ones (docs/design.md §4), side by side with the GLM.

Rows: held-out trials of movies seen in training, and trials of held-out movies (a recording
without movie ids has one row, "trials"). Per row and per model:
- psth_r: per-neuron Pearson correlation of the simulated PSTH (mean over trials x repeats) with
  the recorded PSTH (mean over the recorded trials), PSTHs of each movie concatenated;
- rates: mean firing rates, simulated / recorded (population ratio; per-neuron relative error);
- isi_ks: per-neuron Kolmogorov-Smirnov distance between ISI distributions (ISIs within trials);
- pairwise_similarity: correlation between the upper triangles of the recorded and simulated
  neuron x neuron correlation matrices of PSTH-bin counts;
- window_f1: F1 of "unit fires in the bin" of each simulated repeat against its recorded trial,
  pooled over units and bins;
- with a run (and for the GLM): NLL per spike of the recorded spikes in the full current windows
  tiling each trial, and bits per spike over a homogeneous Poisson process on the 1 ms grid
  (rates from the training split).
The noise ceiling: split-half (odd vs even trials) PSTH correlation of the recorded trials, its
Spearman-Brown extension to all trials, and sqrt of that, the expected correlation of a perfect
model's PSTH with the recorded one; and the window F1 between recorded trials of one movie.
"""
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy.special import gammaln
from scipy.stats import ks_2samp

from .checkpoints import load_run
from .data.calcium import traces_from_events
from .data.objects import DatasetIndex
from .data.recording import behavior_variables, has_events, open_recording, spike_counts
from .errors import InputError
from .glm import GLMConfig, PoissonGLM
from .plots import correlation_scatter, example_psths, rasters
from .provenance import write_result
from .simulations import load_simulation
from .training import evaluate


def evaluate_simulation(data_path, sim_path, out_path, run=None, baseline=None, device="cpu", psth_bin=0.05,
                        seed=0, progress=True):
    """Compare a simulation with the recording, write the JSON report and figures, return it (its
    provenance: the run's config, if given, and the GLM rollouts' seed)."""
    sim = load_simulation(sim_path)
    data = open_recording(data_path)
    _check_match(data, sim, sim_path)
    models = {"neuroformer": sim}
    loaded = load_run(run, data_path, device) if run else None
    glm = None
    if baseline == "glm":
        inputs = loaded[0].variables(False) if loaded else behavior_variables(data)
        longest = float(np.max(np.asarray(sim.trials["end"]) - np.asarray(sim.trials["start"])))
        glm_cfg = GLMConfig(gaze=loaded[2].spec.gaze) if loaded else GLMConfig()     # the frames the model saw
        glm = PoissonGLM.fit(data_path, glm_cfg, behavior=inputs, feature_file=_feature_file(loaded, data_path),
                             progress=progress, stable_seconds=longest)
        models["glm"] = glm.simulate(data, sim.trials, sim.repeats, seed, progress=progress)

    rows, per_neuron = {}, {}
    events, trace_example = has_events(data), None
    for group, trials in stimulus_groups(data, sim.trials).items():
        rec = _recorded(data, sim.trials, trials)
        row = {"trials": len(trials), "movies": sorted({int(sim.trials["stimulus_id"][i]) for i in trials}),
               "noise_ceiling": _noise_ceiling(rec, sim.trials, trials, psth_bin, len(sim.unit_ids))}
        for name, s in models.items():
            row[name], per_neuron[(group, name)] = _compare(rec, s, sim.trials, trials, psth_bin)
        if events:                                  # calcium events: also as the traces they would give
            traces = _traces(data, models, sim.trials, trials, seed)
            for name in models:
                row[name].update(_trace_scores(traces["recorded"], traces[name]))
            trace_example = traces if trace_example is None else trace_example   # the first row's, for the figure
        if loaded or glm:
            scores = _likelihoods(data, sim.trials, trials, loaded, glm)
            for name, value in scores.items():
                row.setdefault(name, {}).update(value)
        rows[group] = row

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figures = _figures(data, models, sim, per_neuron, psth_bin, out_path.with_suffix(""))
    if events:
        units = np.argsort(-trace_example["recorded"].std(0))[:6]
        figures.append(example_psths(trace_example, units, 1.0 / float(data.calcium.sampling_rate),
                                     "ΔF/F averaged over trials (simulated events through each ROI's fitted indicator)",
                                     f"{out_path.with_suffix('')}_traces.png", unit_label="ΔF/F"))
    report = {"recording": str(data_path), "simulated": str(sim_path), "run": str(run) if run else None,
              "psth_bin": psth_bin, "repeats": sim.repeats, "rows": rows, "summary": _summary(rows),
              "glm": {"penalty": glm.penalty, "config": asdict(glm.cfg)} if glm else None,
              "figures": [str(f) for f in figures]}
    return write_result(out_path, report, loaded[0] if loaded else None, seed)


def _check_match(data, sim, sim_path):
    ids = np.asarray(data.units.id).astype(str)
    if len(ids) != len(sim.unit_ids) or (ids != sim.unit_ids).any():
        raise InputError(sim_path, ("units/id", "the simulation's units are not the recording's (another recording?)"))
    n = len(data.trials) if "trials" in data.keys() else 0
    if n and (sim.trials["index"].max() >= n):
        raise InputError(sim_path, ("trials/index", f"trial {int(sim.trials['index'].max())} is not in the recording "
                                                    f"({n} trials)"))


def stimulus_groups(data, trials):
    """Rows of the report: positions into `trials` of training-movie and held-out-movie trials."""
    stim = np.asarray(trials["stimulus_id"])
    if (stim < 0).all():
        return {"trials": list(range(len(stim)))}
    seen = set()
    if "trials" in data.keys():
        dom = data.train_domain
        t_start, t_stim = np.asarray(data.trials.start), np.asarray(data.trials.stimulus_id)
        k = np.searchsorted(dom.start, t_start, side="right") - 1
        inside = (k >= 0) & (t_start < np.asarray(dom.end)[np.maximum(k, 0)])
        seen = set(t_stim[inside].tolist())
    groups = {"training_movies": [i for i, s in enumerate(stim) if s in seen],
              "held_out_movies": [i for i, s in enumerate(stim) if s not in seen]}
    return {k: v for k, v in groups.items() if v}


def _recorded(data, trials, positions):
    """Recorded spikes of the given trials as (times from trial start, unit) per position."""
    out = {}
    for i in positions:
        s, e = float(trials["start"][i]), float(trials["end"][i])
        w = data.spikes.slice(s, e, reset_origin=False)
        out[i] = (np.asarray(w.timestamps) - s, np.asarray(w.unit_index))
    return out


def _simulated(sim, trials, i, r):
    t, u = sim.spikes_of(int(trials["index"][i]), r)
    return t - float(trials["start"][i]), u


def _counts(times, units, n_bins, bin_size, n_units):
    k = np.floor(times / bin_size + 1e-9).astype(np.int64)
    keep = (k >= 0) & (k < n_bins)
    c = np.zeros((n_bins, n_units))
    np.add.at(c, (k[keep], units[keep]), 1)
    return c


def _by_movie(trials, positions):
    stim = np.asarray(trials["stimulus_id"])
    return {int(m): [i for i in positions if stim[i] == m] for m in sorted(set(stim[positions].tolist()))}


def _psths(spikes_of, trials, positions, psth_bin, n_units):
    """PSTH (Hz) per movie, concatenated over movies: spikes_of(i) gives a list of (times, units)."""
    parts = []
    for movie, idx in _by_movie(trials, positions).items():
        n_bins = int(min(trials["end"][i] - trials["start"][i] for i in idx) / psth_bin + 1e-9)
        runs = [_counts(t, u, n_bins, psth_bin, n_units) for i in idx for t, u in spikes_of(i)]
        parts.append(np.mean(runs, 0) / psth_bin if runs else np.zeros((n_bins, n_units)))
    return np.concatenate(parts)


def _rowwise_r(a, b):
    """Pearson r of each column of a with the same column of b (NaN where either is constant)."""
    a, b = a - a.mean(0), b - b.mean(0)
    den = np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, np.nan)


def _median(x):
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def _compare(rec, sim, trials, positions, psth_bin):
    n = len(sim.unit_ids)
    repeats = range(sim.repeats)
    runs = {(i, q): _simulated(sim, trials, i, q) for i in positions for q in repeats}
    rec_psth = _psths(lambda i: [rec[i]], trials, positions, psth_bin, n)
    sim_psth = _psths(lambda i: [runs[(i, q)] for q in repeats], trials, positions, psth_bin, n)
    r = _rowwise_r(rec_psth, sim_psth)

    duration = sum(float(trials["end"][i] - trials["start"][i]) for i in positions)
    rec_n = np.bincount(np.concatenate([rec[i][1] for i in positions]), minlength=n)
    sim_n = np.bincount(np.concatenate([u for _, u in runs.values()]), minlength=n)
    rec_rate, sim_rate = rec_n / duration, sim_n / (duration * sim.repeats)
    active = rec_rate > 0

    rec_isi, sim_isi = _isis([rec[i] for i in positions], n), _isis(list(runs.values()), n)
    ks = [ks_2samp(a, b).statistic for a, b in zip(rec_isi, sim_isi) if len(a) >= 20 and len(b) >= 20]

    rec_bins = {i: _trial_counts(rec[i], trials, i, psth_bin, n) for i in positions}
    sim_bins = {key: _trial_counts(run, trials, key[0], psth_bin, n) for key, run in runs.items()}
    tp = fp = fn = 0
    for (i, _), b in sim_bins.items():
        a, b = rec_bins[i] > 0, b > 0
        tp, fp, fn = tp + (a & b).sum(), fp + (~a & b).sum(), fn + (a & ~b).sum()
    metrics = {
        "psth_r_median": _median(r), "psth_r_mean": float(np.nanmean(r)) if np.isfinite(r).any() else None,
        "rate_recorded_hz": float(rec_rate.mean()), "rate_simulated_hz": float(sim_rate.mean()),
        "rate_ratio": float(sim_rate.mean() / max(rec_rate.mean(), 1e-12)),
        "rate_rel_error_median": _median(np.abs(sim_rate[active] - rec_rate[active]) / rec_rate[active]),
        "rate_r": float(_rowwise_r(rec_rate[:, None], sim_rate[:, None])[0]),
        "isi_ks_median": _median(ks), "isi_units": len(ks),
        "pairwise_similarity": _pairwise_similarity(np.concatenate(list(rec_bins.values())),
                                                    np.concatenate(list(sim_bins.values()))),
        "window_f1": float(2 * tp / max(2 * tp + fp + fn, 1)),
    }
    return metrics, r


def _isis(runs, n):
    """Inter-spike intervals of each unit, within each run (trial or repeat), as n arrays."""
    gaps, owners = [], []
    for t, u in runs:
        order = np.lexsort((t, u))
        t, u = t[order], u[order]
        same = u[1:] == u[:-1]
        gaps.append(np.diff(t)[same])
        owners.append(u[1:][same])
    gaps, owners = np.concatenate(gaps + [np.zeros(0)]), np.concatenate(owners + [np.zeros(0, np.int64)])
    order = np.argsort(owners, kind="stable")
    return np.split(gaps[order], np.searchsorted(owners[order], np.arange(1, n)))


def _trial_counts(spikes, trials, i, bin_size, n):
    n_bins = int((trials["end"][i] - trials["start"][i]) / bin_size + 1e-9)
    return _counts(spikes[0], spikes[1], n_bins, bin_size, n)


def _pairwise_similarity(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        ca, cb = np.corrcoef(a.T), np.corrcoef(b.T)
    iu = np.triu_indices(len(ca), 1)
    x, y = ca[iu], cb[iu]
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 2 else None


def _noise_ceiling(rec, trials, positions, psth_bin, n):
    halves = [[], []]
    for movie, idx in _by_movie(trials, positions).items():
        if len(idx) < 2:
            return {"note": f"movie {movie} has fewer than 2 recorded trials; no split-half ceiling"}
        halves[0] += idx[0::2]
        halves[1] += idx[1::2]
    a = _psths(lambda i: [rec[i]], trials, halves[0], psth_bin, n)
    b = _psths(lambda i: [rec[i]], trials, halves[1], psth_bin, n)
    r = _rowwise_r(a, b)
    sb = 2 * r / (1 + r)
    tp = fp = fn = 0
    for movie, idx in _by_movie(trials, positions).items():
        for x in range(len(idx)):
            for y in range(x + 1, len(idx)):
                p = _trial_counts(rec[idx[x]], trials, idx[x], psth_bin, n) > 0
                q = _trial_counts(rec[idx[y]], trials, idx[y], psth_bin, n) > 0
                tp, fp, fn = tp + (p & q).sum(), fp + (~p & q).sum(), fn + (p & ~q).sum()
    return {"split_half_r_median": _median(r), "spearman_brown_median": _median(sb),
            "psth_r_ceiling_median": _median(np.sqrt(np.clip(sb, 0, None))),
            "window_f1_between_trials": float(2 * tp / max(2 * tp + fp + fn, 1))}


def _figures(data, models, sim, per_neuron, psth_bin, stem):
    """Rasters of the first trial of each row, PSTHs of the six most modulated units on the
    first movie, and the per-neuron correlation scatter."""
    groups, n = stimulus_groups(data, sim.trials), len(sim.unit_ids)
    panels = {}
    for group, positions in groups.items():
        i = positions[0]
        rec = _recorded(data, sim.trials, [i])[i]
        panels[f"{group}: trial {int(sim.trials['index'][i])}"] = {
            "recorded": rec, **{name: _simulated(s, sim.trials, i, 0) for name, s in models.items()}}
    first = next(iter(groups.values()))
    movie, idx = next(iter(_by_movie(sim.trials, first).items()))
    rec = _recorded(data, sim.trials, idx)
    psths = {"recorded": _psths(lambda i: [rec[i]], sim.trials, idx, psth_bin, n)}
    for name, s in models.items():
        psths[name] = _psths(lambda i: [_simulated(s, sim.trials, i, r) for r in range(s.repeats)],
                             sim.trials, idx, psth_bin, n)
    units = np.argsort(-psths["recorded"].std(0))[:6]
    return [rasters(panels, n, f"{stem}_rasters.png"),
            example_psths(psths, units, psth_bin, f"movie {movie}: {len(idx)} recorded trials", f"{stem}_psth.png"),
            correlation_scatter(per_neuron, f"{stem}_psth_r.png")]


# ---------------------------------------------------------------------- calcium traces

CALCIUM_LEAD = 5.0          # s of recorded events before a trial that set its calcium at the trial's start


def _traces(data, models, trials, positions, seed):
    """Trial-averaged ΔF/F (frames, ROIs) per movie, concatenated over movies: recorded, and for
    each model its simulated events (after the recorded ones of the CALCIUM_LEAD s before the
    trial) made traces by each ROI's fitted indicator (`calcium.traces_from_events`), averaged
    without noise and given the noise of an average of as many trials as were recorded."""
    series, fits = data.calcium, data.deconvolution
    rate, t0 = float(series.sampling_rate), float(series.domain.start[0])
    lead, rng = int(round(CALCIUM_LEAD * rate)), np.random.default_rng(seed)
    out = {name: [] for name in ("recorded", *models)}
    for _, idx in _by_movie(trials, positions).items():
        spans = [(int(np.ceil((trials["start"][i] - t0) * rate - 1e-9)),
                  int(np.floor((trials["end"][i] - t0) * rate + 1e-9))) for i in idx]
        n = min(b - a for a, b in spans)
        out["recorded"].append(np.mean([np.asarray(series.dff[a:a + n]) for a, _ in spans], 0))
        before = [data.spikes.slice(t0 + (a - lead) / rate, float(trials["start"][i]), reset_origin=False)
                  for i, (a, _) in zip(idx, spans)]
        for name, sim in models.items():
            runs = []
            for i, (a, _), prior in zip(idx, spans, before):
                for r in range(sim.repeats):
                    t, u = _simulated(sim, trials, i, r)
                    times = np.concatenate([np.asarray(prior.timestamps), t + float(trials["start"][i])])
                    units = np.concatenate([np.asarray(prior.unit_index), u])
                    runs.append(traces_from_events(times, units, fits, rate, t0 + (a - lead) / rate, lead + n)[lead:])
            noise = rng.standard_normal(runs[0].shape) * np.asarray(fits.noise) / np.sqrt(len(idx))
            out[name].append(np.mean(runs, 0) + noise)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _trace_scores(recorded, simulated):
    """Median over ROIs of the correlation of trial-averaged traces, and of the KS distance
    between their ΔF/F values."""
    ks = [ks_2samp(a, b).statistic for a, b in zip(recorded.T, simulated.T)]
    return {"trace_r_median": _median(_rowwise_r(recorded, simulated)), "trace_ks_median": _median(ks)}


# ---------------------------------------------------------------------- likelihoods

def _feature_file(loaded, data_path):
    if not loaded or not loaded[2].spec.features:
        return None
    return Path(data_path).with_suffix(f".{loaded[2].spec.features}.features.h5")


def _likelihoods(data, trials, positions, loaded, glm):
    """NLL per spike and bits per spike over homogeneous Poisson of the recorded spikes in the
    full current windows tiling each trial (the windows the model generates)."""
    dt = 1e-3 if loaded is None else loaded[0].window.dt_res
    current = 0.05 if loaded is None else loaded[0].window.current
    n_cur = int(round(current / dt))
    train_counts = sum(spike_counts(data, a, b, dt).sum(0) for a, b in
                       zip(np.asarray(data.train_domain.start), np.asarray(data.train_domain.end)))
    train_time = float(np.sum(np.asarray(data.train_domain.end) - np.asarray(data.train_domain.start)))
    rate = np.maximum(train_counts / train_time, 1e-3)                 # Hz, floor for silent units
    ll_hom, n_spikes, ll_glm, windows = 0.0, 0, 0.0, []
    for i in positions:
        k0 = int(round(trials["start"][i] / dt))
        n_full = int(round(trials["end"][i] / dt)) - k0
        n_full -= n_full % n_cur
        if glm is not None:
            ll, counts = glm.log_likelihood(data, k0 * dt, (k0 + n_full) * dt)
            ll_glm += float(ll.sum())
        else:
            counts = spike_counts(data, k0 * dt, (k0 + n_full) * dt, dt)
        ll_hom += float((counts * np.log(rate * dt) - rate * dt).sum() - _log_factorial(counts))
        n_spikes += int(counts.sum())
        windows += [k0 + w * n_cur for w in range(n_full // n_cur)]
    out = {}
    if glm is not None:
        out["glm"] = {"nll_per_spike": -ll_glm / max(n_spikes, 1),
                      "bits_per_spike": (ll_glm - ll_hom) / (max(n_spikes, 1) * math.log(2))}
    if loaded is not None:
        cfg, model, dataset, recordings, device = loaded
        rid, spec = recordings.recording_ids[0], dataset.spec
        index = [DatasetIndex(rid, k * dt - spec.before, (k + n_cur) * dt) for k in windows]
        batches = [index[j:j + 64] for j in range(0, len(index), 64)]
        metrics = evaluate(model, dataset, batches, device)
        ll_model = -metrics["nll_per_spike"] * n_spikes
        out["neuroformer"] = {"nll_per_spike": metrics["nll_per_spike"],
                              "bits_per_spike": (ll_model - ll_hom) / (max(n_spikes, 1) * math.log(2))}
    for v in out.values():
        v["scored_spikes"] = n_spikes
    return out


def _log_factorial(counts):
    return float(gammaln(counts + 1).sum())


def _summary(rows):
    keys = ("psth_r_median", "rate_ratio", "isi_ks_median", "pairwise_similarity", "window_f1", "bits_per_spike",
            "trace_r_median", "trace_ks_median")
    out = {}
    for group, row in rows.items():
        out[group] = {name: {k: row[name].get(k) for k in keys if k in row[name]}
                      for name in ("neuroformer", "glm") if name in row}
        out[group]["noise_ceiling"] = row["noise_ceiling"].get("psth_r_ceiling_median")
    return out


def format_comparison(summary):
    """The report's summary as a text table: one line per row group and model."""
    cols = ("psth_r_median", "rate_ratio", "isi_ks_median", "pairwise_similarity", "window_f1", "bits_per_spike")
    lines = [f"{'':<18}{'model':<13}" + "".join(f"{c:>21}" for c in cols)]
    for group, row in summary.items():
        for name in ("neuroformer", "glm"):
            if name in row:
                cells = "".join(f"{row[name][c]:>21.3f}" if row[name].get(c) is not None else f"{'-':>21}" for c in cols)
                lines.append(f"{group:<18}{name:<13}{cells}")
        ceiling = row.get("noise_ceiling")
        lines.append(f"{group:<18}{'ceiling':<13}" + (f"{ceiling:>21.3f}" if ceiling is not None else f"{'-':>21}"))
    return "\n".join(lines)
