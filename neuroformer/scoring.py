"""Held-out log-likelihood of recorded spikes: `neuroformer score` (docs/design.md §2).

Every interval of a split (its trials, or the split's own intervals) is tiled by the model's
current windows from its start; each spike is scored exactly once, with the context the model
has in use (recorded history and stimulus before it, gaps that would leave the window at zero
probability). A last, partial window is scored up to the interval's end: its spikes, then the
probability that no other spike comes before the end. The reference is a homogeneous Poisson
process with each unit's training-split rate on the same dt_res grid:

    bits/spike = (LL_model - LL_null) / (n_spikes * ln 2)

Per neuron, the model's log-likelihood is split exactly (competing risks): each spike's event
term goes to its unit; each bin's log-probability of no spike, log(1 - h), goes to the units in
proportion to p(unit | spike in that bin). The library GLM, fitted on the training split, is
scored on the identical bins (each unit's Poisson log-likelihood given the recorded history).
Rows: trials of stimuli seen in training, trials of held-out stimuli, and all.
"""
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy.special import gammaln
from tqdm import tqdm

from .checkpoints import checkpoint_file, load_model
from .data.objects import DatasetIndex
from .data.recording import spike_counts
from .data.windows import IGNORE, collate_windows
from .errors import InputError
from .evaluate import stimulus_groups
from .glm import GLMConfig, PoissonGLM
from .plots import per_neuron_scatter
from .provenance import write_result
from .rollouts import select_trials
from .training import to_device


def bits_per_spike(ll_model, ll_null, n_spikes):
    """Information gained over the null model per spike (bits)."""
    return (ll_model - ll_null) / (max(n_spikes, 1) * math.log(2))


def poisson_log_likelihood(counts, expected):
    """Per-unit Poisson log-likelihood (N,) of counts (T, N) with expected counts (T, N) or (N,)."""
    expected = np.broadcast_to(np.asarray(expected, dtype=np.float64), counts.shape)
    return (counts * np.log(expected) - expected - gammaln(counts + 1)).sum(0)


def training_rates(data, bin_size):
    """Each unit's mean spike count per bin over the training split (floored at 1e-3 Hz)."""
    dom = data.train_domain
    counts = sum(spike_counts(data, a, b, bin_size).sum(0) for a, b in zip(np.asarray(dom.start), np.asarray(dom.end)))
    seconds = float(np.sum(np.asarray(dom.end) - np.asarray(dom.start)))
    return np.maximum(counts / seconds, 1e-3) * bin_size


def score(run, data_path, out_path, split="test", baseline=None, device="cpu", batch_size=16, progress=True):
    """Score the model of `run` (and the GLM with baseline="glm") on `split`; write JSON and figure."""
    checkpoint = checkpoint_file(run)
    cfg, model, dataset, recordings = load_model(checkpoint, [data_path], device)
    rid = recordings.recording_ids[0]
    data = recordings.get_recording(rid)
    trials = select_trials(data, data_path, split)
    dt = cfg.window.dt_res
    null_rate = training_rates(data, dt)
    model_ll, n_units = _model_log_likelihood(model, dataset, rid, trials, device, batch_size, progress), len(null_rate)
    glm = None
    if baseline == "glm":
        longest = float(np.max(trials["end"] - trials["start"]))
        feature_file = Path(data_path).with_suffix(f".{dataset.spec.features}.features.h5") if dataset.spec.features else None
        glm = PoissonGLM.fit(data_path, GLMConfig(gaze=dataset.spec.gaze), behavior=cfg.variables(False),
                             feature_file=feature_file, progress=progress, stable_seconds=longest)
    elif baseline is not None:
        raise InputError("--baseline", ("baseline", f"unknown {baseline!r} (glm)"))

    per_trial = []
    for i in range(len(trials["index"])):
        start, end = _grid(trials["start"][i], dt), _grid(trials["end"][i], dt)
        counts = spike_counts(data, start, end, dt)
        row = {"n": counts.sum(0), "null": poisson_log_likelihood(counts, null_rate), "neuroformer": model_ll[i]}
        if glm is not None:
            ll, _ = glm.log_likelihood(data, start, end)
            row["glm"] = ll.sum(0)
        per_trial.append(row)

    rows = {}
    groups = stimulus_groups(data, trials)
    for name, positions in ({**groups, "all": list(range(len(per_trial)))} if len(groups) > 1 else groups).items():
        rows[name] = _row([per_trial[p] for p in positions], n_units)
        rows[name]["trials"] = len(positions)
    report = {"recording": str(data_path), "run": str(checkpoint), "split": split, "dt_res": dt,
              "null": "homogeneous Poisson, each unit's training-split rate",
              "unit_ids": [str(u) for u in data.units.id], "rows": rows,
              "glm": {"penalty": glm.penalty, "config": asdict(glm.cfg)} if glm else None}
    out_path = Path(out_path)
    per_neuron = {row: {name: r[name]["per_neuron_bits_per_spike"] for name in ("neuroformer", "glm") if name in r}
                  for row, r in rows.items()}
    figure = per_neuron_scatter(per_neuron, out_path.with_suffix(".png"))
    report["figure"] = str(figure)
    return write_result(out_path, report, config=cfg)


def _grid(t, dt):
    return round(float(t) / dt) * dt


def _row(trials, n_units):
    n = sum(t["n"] for t in trials)
    null = sum(t["null"] for t in trials)
    out = {"n_spikes": int(n.sum())}
    for name in ("neuroformer", "glm"):
        if name not in trials[0]:
            continue
        ll = sum(t[name] for t in trials)
        per_neuron = [bits_per_spike(ll[i], null[i], n[i]) if n[i] else None for i in range(n_units)]
        out[name] = {"log_likelihood": float(ll.sum()), "nll_per_spike": float(-ll.sum() / max(n.sum(), 1)),
                     "bits_per_spike": bits_per_spike(float(ll.sum()), float(null.sum()), int(n.sum())),
                     "per_neuron_bits_per_spike": per_neuron}
    out["null_log_likelihood"] = float(null.sum())
    return out


def _model_log_likelihood(model, dataset, rid, trials, device, batch_size, progress):
    """Per trial, each unit's share (N,) of the model's log-likelihood of the trial's spikes."""
    spec, dt = dataset.spec, dataset.spec.dt_res
    n_cur = int(round(spec.current / dt))
    tokens = torch.as_tensor(dataset.unit_tokens[rid], device=device)
    windows = []                                    # (trial, k0, bins scored in this window)
    for i in range(len(trials["index"])):
        k_start, k_end = round(trials["start"][i] / dt), round(trials["end"][i] / dt)
        windows += [(i, k0, min(n_cur, k_end - k0)) for k0 in range(k_start, k_end, n_cur)]
    out = np.zeros((len(trials["index"]), len(tokens)))
    model.eval()
    for j in tqdm(range(0, len(windows), batch_size), desc="scoring", unit="batch", disable=not progress):
        chunk = windows[j:j + batch_size]
        idx = [DatasetIndex(rid, k0 * dt - spec.before, (k0 + n_cur) * dt) for _, k0, _ in chunk]
        batch = to_device(collate_windows([dataset[x] for x in idx]), device)
        n_end = torch.tensor([n for _, _, n in chunk], device=device)
        with torch.no_grad():
            shares = window_log_likelihood(model, batch, n_end, tokens)
        for (i, _, _), s in zip(chunk, shares.double().cpu().numpy()):
            out[i] += s
    return out


def window_log_likelihood(model, batch, n_end, tokens):
    """Each unit's share (B, N) of the log-probability of the window's spikes in its first
    `n_end` bins and of no other spike before bin `n_end`; units are the vocabulary `tokens`
    (the recording's, in unit order), the only ones the model may name here."""
    cur = batch["current"]
    memory, _ = model.encode_context(batch)
    x = model.decode(cur, memory)
    bias = model.unit_bias(batch, cur, memory)
    bins = model.position_bins(cur)
    gap_lp = model.gap_log_probs(x, bias, bins, cur["unit"]).double()                            # (B, L, n_dt + 1)
    B, L, n_dt = x.shape[0], x.shape[1], model.n_dt
    gaps = torch.arange(n_dt, device=x.device)
    every = model.unit_logits(x.repeat_interleave(n_dt, 1), bias, gaps.repeat(L)[None].expand(B, -1),
                              bins.repeat_interleave(n_dt, 1), cur["unit"].repeat_interleave(n_dt, 1))
    unit_lp = every[..., tokens].double().log_softmax(-1).view(B, L, n_dt, len(tokens))

    d_star, target = cur["dt_target"], cur["unit_target"]
    real = cur["mask"]
    event = real & (target != IGNORE) & (bins + d_star.clamp(min=0) < n_end[:, None])
    terminal = real & ~event & ((real & ~event).cumsum(1) == 1)
    log_survive = torch.logcumsumexp(gap_lp.flip(-1), -1).flip(-1)                   # log P(gap >= d)
    log_no_spike = (log_survive[..., 1:] - log_survive[..., :-1]).nan_to_num(0.0)     # log(1 - h(d)), (B, L, n_dt)
    reach = torch.where(event, d_star, n_end[:, None] - bins).clamp(0, n_dt)         # survived bins: d < reach
    survived = (gaps < reach[..., None]) & (event | terminal)[..., None]
    shares = torch.einsum("bld,bldn->bn", (log_no_spike * survived).double(), unit_lp.exp())

    unit_of = torch.zeros(int(tokens.max()) + 1, dtype=torch.long, device=x.device)
    unit_of[tokens] = torch.arange(len(tokens), device=x.device)                   # vocabulary token -> unit
    d = d_star.clamp(0, n_dt - 1)
    hazard = gap_lp.gather(-1, d[..., None])[..., 0] - log_survive.gather(-1, d[..., None])[..., 0]
    u = unit_of[target.clamp(min=0, max=len(unit_of) - 1)]
    unit_term = unit_lp.gather(2, d[..., None, None].expand(-1, -1, 1, len(tokens)))[:, :, 0].gather(-1, u[..., None])[..., 0]
    spike = torch.where(event, hazard + unit_term, torch.zeros_like(hazard))
    return shares.scatter_add(1, u * event, spike)
