"""Behaviour decoding scored on held-out data: Neuroformer (joint, finetune, probe) beside the
baselines of `decoders`, on identical samples (docs/design.md §5.2).

The samples of a split are its behaviour samples that have a full model context inside their
own split interval (all but the first `before` seconds of each interval), each scored exactly
once. Neuroformer predicts them on a sequential tiling of windows, the last window of an
interval aligned to its end; every sample is read from the one window assigned to it. Every
model's predicted trace may be smoothed by a Gaussian whose width, like every other choice,
is picked on the validation split (best Pearson r), as is, per variable, the Neuroformer
checkpoint it is read from (or the mean of the checkpoints) and the weight of the transformer's
correction to the Wiener filter inside; the test split is only scored.

Modes: joint trains the behaviour heads with the spike objective from scratch; finetune
starts from a pretrained run; probe fits linear read-outs of frozen representations (random
init; history only; + stimulus; + current window), fitted on train, chosen on valid; baselines
scores the baselines alone, on the samples a config's windows hold (more seeds of them).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from .assembly import build, window_spec
from .autoconfig import config_for, resolve_names
from .checkpoints import checkpoint_file, load_checkpoint, load_model
from .config import GazeConfig, Modality, Variable
from .data.objects import DatasetIndex, Interval
from .data.recording import behavior_values, class_count, first_fraction, open_recording
from .data.windows import check_calcium_span, collate_windows
from .decoders import BASELINES, BinnedSplit, baseline_grid, baseline_input
from .errors import InputError
from .io import atomic_path
from .model import _masked_mean
from .plots import subplots
from .provenance import write_result
from .smoothing import SMOOTHING, pearson, smooth
from .training import RunOptions, to_device, train

MODES = ("joint", "finetune", "probe", "baselines")
CORRECTION = (1.0, 0.75, 0.5, 0.25)              # weights of the transformer's correction to the Wiener filter tried
MIN_EVALS = 8                                    # validations per decoding run: its checkpoint choices


@dataclass
class Samples:
    """Behaviour samples of one split: times, values (n, n_targets), the interval each lies in,
    and the split's intervals (starts, ends)."""
    times: np.ndarray
    values: np.ndarray
    interval: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def in_head(self, fraction):
        """Which samples lie inside the first `fraction` of the split's time (nested as it grows)."""
        cut = first_fraction(Interval(start=self.starts, end=self.ends), fraction)
        keep = np.zeros(len(self.times), dtype=bool)
        for k, end in enumerate(np.asarray(cut.end)):
            keep |= (self.interval == k) & (self.times < end)
        return keep

    def head(self, fraction):
        """The samples `in_head(fraction)`."""
        keep = self.in_head(fraction)
        return Samples(self.times[keep], self.values[keep], self.interval[keep], self.starts, self.ends)


def split_samples(data, targets, split, before, current, path="recording", lag=0.0):
    """Samples of `targets` (full names, one shared clock) in `split` that a window of the
    interval holds: from `before - lag` s after its start to `lag` s before its end (intervals
    shorter than one window, before + current, hold none)."""
    clocks = [np.asarray(getattr(data.behavior, t.split(".")[0]).timestamps, dtype=float) for t in targets]
    if any(len(c) != len(clocks[0]) or not np.allclose(c, clocks[0]) for c in clocks[1:]):
        raise InputError(path, ("behavior", f"targets {targets} are sampled at different times; decode them "
                                            "in separate runs"))
    t = clocks[0]
    values = np.stack([np.asarray(getattr(getattr(data.behavior, n.split(".")[0]), n.split(".")[1]), dtype=float)
                       for n in targets], 1)
    if not np.isfinite(values).all():
        raise InputError(path, ("behavior", f"targets {targets} hold NaN or infinite values"))
    domain = getattr(data, f"{split}_domain")
    starts, ends = np.asarray(domain.start, dtype=float), np.asarray(domain.end, dtype=float)
    interval = np.searchsorted(starts, t, side="right") - 1
    k = np.clip(interval, 0, None)
    ok = ((interval >= 0) & (t + lag < ends[k]) & (t + lag >= starts[k] + before)
          & (ends[k] - starts[k] >= before + current))
    return Samples(t[ok], values[ok], interval[ok], starts, ends)


def decode_samples(data, targets, spec, path="recording"):
    """The samples of every split that windows of `spec` hold, with "targets" and their "classes"."""
    check_calcium_span(data, spec.calcium, path)
    samples = {s: split_samples(data, targets, s, spec.before, spec.current, path, spec.target_lag)
               for s in ("train", "valid", "test")}
    empty = [s for s in ("train", "valid", "test") if not len(samples[s].times)]
    if empty:
        raise InputError(path, ("window", f"no {' or '.join(empty)} sample has a whole {spec.length:g} s window "
                                          "inside its split interval: shorten window.history (or window.calcium, "
                                          "--calcium-tokens)"))
    samples["targets"], samples["classes"] = targets, target_classes(data, targets)
    return samples


def target_classes(data, targets):
    """Number of classes per target (`class_count`: class labels), 0 for a regression."""
    return [class_count(behavior_values(data, name)) for name in targets]


def window_tiling(samples, before, current, lag=0.0):
    """(window start t0, sample indices) pairs: each interval tiled from start + before with step
    `current`, the last window aligned to the interval's end; each sample in exactly one window,
    the one whose current span holds the sample's time + `lag` (targets are read `lag` s early)."""
    out = []
    for k, (a, e) in enumerate(zip(samples.starts, samples.ends)):
        rows = np.flatnonzero(samples.interval == k)
        if not len(rows):
            continue
        n_full = int(np.floor((e - a - before) / current + 1e-9))
        t0s = a + before + current * np.arange(n_full)
        which = np.minimum(((samples.times[rows] + lag - a - before) / current + 1e-9).astype(int), n_full)
        if (which == n_full).any():
            t0s = np.append(t0s, e - current)
        for j, t0 in enumerate(t0s):
            if (which == j).any():
                out.append((float(t0), rows[which == j]))
    return out


def _over_windows(dataset, rid, samples, fn, batch_size, device, desc):
    """fn(batch) -> per window b a function of the window's sample times (relative to t0) giving
    their rows; concatenated in sample order."""
    spec = dataset.spec
    before, current = spec.before, spec.current
    tiles = window_tiling(samples, before, current, spec.target_lag)
    out = None
    for i in tqdm(range(0, len(tiles), batch_size), desc=desc, unit="batch", leave=False,
                  disable=len(tiles) < 20 * batch_size):
        chunk = tiles[i:i + batch_size]
        batch = collate_windows([dataset[DatasetIndex(rid, t0 - before, t0 + current)] for t0, _ in chunk])
        t0 = batch["t0"].numpy()
        batch = to_device(batch, device)
        with torch.no_grad():
            per_window = fn(batch)
        for b, (_, rows) in enumerate(chunk):
            values = per_window(b, samples.times[rows] - t0[b])
            out = np.zeros((len(samples.times), values.shape[1])) if out is None else out
            out[rows] = values
    return out


def neuroformer_predictions(model, dataset, rid, samples, targets, batch_size=16, device="cpu", wiener=False):
    """(n, n_targets) decoded values of every sample (`wiener`: the Wiener filter's alone)."""
    predict = model.predict_wiener if wiener else model.predict_behavior

    def fn(batch):
        pred = {k: v.cpu().numpy() for k, v in predict(batch).items()}
        times = {n: batch[f"behavior.{n}"]["time"].cpu().numpy() for n in targets}
        masks = {n: batch[f"behavior.{n}"]["mask"].cpu().numpy() for n in targets}

        def per_window(b, rel):
            cols = []
            for n in targets:
                t = np.where(masks[n][b], times[n][b], np.inf)
                j = np.abs(t[None, :] - rel[:, None]).argmin(1)
                if np.abs(t[j] - rel).max() > 1e-4:
                    raise RuntimeError(f"decode: a sample of {n} is missing from its window")
                cols.append(pred[n][b, j])
            return np.stack(cols, 1)
        return per_window

    return _over_windows(dataset, rid, samples, fn, batch_size, device, "decoding")


def representations(model, dataset, rid, samples, batch_size=16, device="cpu"):
    """Frozen features of each sample's window: pooled history, visual (zeros without frames) and
    current-window decoder states, and the population vector (mean over its bins), each (n, width),
    for the probes."""
    w = model.unit_emb.embedding_dim

    def fn(batch):
        parts, pooled_visual = model.context_parts(batch)
        memory, _ = model.encode_context(batch, (parts, pooled_visual))
        x = model.decode(batch["current"], memory)
        pooled = [_masked_mean(*parts["history"][::2]),
                  _masked_mean(*parts["visual"][::2]) if "visual" in parts else x.new_zeros(len(x), w),
                  _masked_mean(x, batch["current"]["mask"]), model.population(batch).mean(1)]
        feats = torch.cat(pooled, 1).float().cpu().numpy()
        return lambda b, rel: np.repeat(feats[b:b + 1], len(rel), 0)

    f = _over_windows(dataset, rid, samples, fn, batch_size, device, "features")
    return dict(zip(("history", "stimulus", "current", "population"), np.split(f, 4, axis=1)))


# ---------------------------------------------------------------- selection and scores

def scores(pred, y):
    """Pearson r and R² (1 - SSE / SST about the scored data's mean) per column."""
    r = [pearson(p, t) for p, t in zip(pred.T, y.T)]
    r2 = 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    return r, [float(v) for v in r2]


def class_scores(pred, y):
    """Accuracy and balanced accuracy (mean recall over the classes present) of labels."""
    return float(accuracy_score(y, pred)), float(balanced_accuracy_score(y, pred))


def choose(candidates, valid, test, targets, classes=None):
    """Per target, the candidate (params, valid predictions, test predictions) and smoothing width
    with the best validation r (classification: balanced accuracy, unsmoothed labels); its test
    scores. Test predictions play no part in the choice."""
    out = {}
    for k, name in enumerate(targets):
        is_class = bool(classes and classes[k])
        best = None
        for params, pv, pt in candidates:
            for width in (0,) if is_class else SMOOTHING:
                score = (class_scores(pv[:, k], valid.values[:, k])[1] if is_class else
                         scores(smooth(pv[:, k:k + 1], valid.interval, width), valid.values[:, k:k + 1])[0][0])
                if best is None or score > best[0]:
                    best = (score, params, width, pt)
        score, params, width, pt = best
        pred = smooth(pt[:, k:k + 1], test.interval, width)[:, 0]
        if is_class:
            accuracy, balanced = class_scores(pred, test.values[:, k])
            majority = float(np.bincount(test.values[:, k].astype(int)).max() / max(1, len(pred)))
            out[name] = {"test_accuracy": accuracy, "test_balanced_accuracy": balanced,
                         "valid_balanced_accuracy": score, "majority_class_rate": majority, "params": params,
                         "_test_prediction": pred}
        else:
            r_test, r2_test = scores(pred[:, None], test.values[:, k:k + 1])
            out[name] = {"test_r": r_test[0], "test_r2": r2_test[0], "valid_r": score, "smoothing_samples": width,
                         "params": params, "_test_prediction": pred}
    return out


def novel_stimulus(data, samples):
    """Per sample of `samples` (a split), whether its trial shows a stimulus that no training
    trial shows (trials.stimulus_id); None when the recording has no such ids or the split
    holds only seen or only novel stimuli."""
    if "trials" not in data.keys() or "stimulus_id" not in data.trials.keys():
        return None
    start, end = np.asarray(data.trials.start, dtype=float), np.asarray(data.trials.end, dtype=float)
    sid = np.asarray(data.trials.stimulus_id)
    dom = data.train_domain
    mid = (start + end) / 2
    k = np.searchsorted(np.asarray(dom.start), mid, side="right") - 1
    seen = set(sid[(k >= 0) & (mid < np.asarray(dom.end)[np.maximum(k, 0)])].tolist()) - {-1}
    trial = np.searchsorted(start, samples.times, side="right") - 1
    inside = (trial >= 0) & (samples.times < end[np.maximum(trial, 0)])
    novel = inside & (sid[np.maximum(trial, 0)] >= 0) & ~np.isin(sid[np.maximum(trial, 0)], list(seen))
    return novel if novel.any() and (~novel).any() else None


def by_stimulus(result, test, k, novel):
    """Test scores of `result` (one model, target column k; see `choose`) on the samples of seen
    and of novel stimuli: Pearson r (regression) or balanced accuracy (class labels)."""
    pred, y = result["_test_prediction"], test.values[:, k]
    metric = "test_balanced_accuracy" if "test_accuracy" in result else "test_r"
    return {f"{metric}_{kind}_stimuli": (class_scores(pred[rows], y[rows])[1] if "test_accuracy" in result else
                                         scores(pred[rows, None], y[rows, None])[0][0])
            for kind, rows in (("seen", ~novel), ("novel", novel))}


# ---------------------------------------------------------------- models

def gaze_targets(cfg, data, targets, path="config"):
    """The targets by which `cfg` shifts its frames (`window.gaze`)."""
    axes = [v for v in (cfg.window.gaze.x, cfg.window.gaze.y) if v]
    return sorted(set(resolve_names(data, axes, path)) & set(targets))


def decode_config(cfg, data, targets, path="config", without_movie=()):
    """`cfg` with every target a behaviour head (predict: true; classification for class
    labels, see `target_classes`; `reads_frames` as `cfg` names it, false for the targets in
    `without_movie`), never an input, and its frames not shifted by a target's gaze (they would
    show the answer); a variable `cfg` names that the recording lacks is an InputError."""
    window = cfg.window
    if window.behavior < window.current:
        raise InputError(path, ("window.behavior", "decoding needs behaviour windows at least as long as the "
                                                   "current window (each sample is read out of one window)"))
    reads_frames = {}
    for m in cfg.modalities.values():
        for key, name in zip(list(m.variables), resolve_names(data, list(m.variables), path)):
            if name in targets:
                reads_frames[name] = m.variables.pop(key).reads_frames
    if gaze_targets(cfg, data, targets, path):
        window.gaze = GazeConfig()
    decoded = cfg.modalities.setdefault("decoded", Modality())
    for t, k in zip(targets, target_classes(data, targets)):
        decoded.variables[t] = Variable(predict=True, objective="classification" if k else "regression", n_classes=k,
                                        reads_frames=reads_frames.get(t, True) and t not in without_movie)
    return cfg


def baseline_results(data, samples, names, bin_size, seed, progress=True):
    """Per baseline, per target: the chosen setting's scores (see `choose`)."""
    binned = {s: BinnedSplit.of(data, samples[s], bin_size) for s in ("train", "valid", "test")}
    targets, classes = samples["targets"], samples["classes"]
    out = {}
    for name in tqdm(names, desc="baselines", leave=False, disable=not progress):
        candidates = [(params, predict(binned["valid"]), predict(binned["test"]))
                      for params, predict in baseline_grid(name, binned["train"], seed, classes)]
        out[name] = choose(candidates, samples["valid"], samples["test"], targets, classes)
    return out


def probe_features(run, data_path, samples, seed, device, batch_size=16, trained=True):
    """Per probe row, (n, features) of every split: frozen features of the run's model (and, for
    "random init", of an untrained model of the same config, initialised with `seed`).
    `trained=False`: the "random init" row alone (another seed of it)."""
    cfg, model, dataset, recordings = load_model(checkpoint_file(run), [data_path], device)
    rid = recordings.recording_ids[0]
    torch.manual_seed(seed)
    random_model = build(cfg, [data_path], dataset.vocab, model.behavior_stats.tolist())[2].to(device).eval()
    splits = ("train", "valid", "test")
    rand = {s: representations(random_model, dataset, rid, samples[s], batch_size, device) for s in splits}
    everything = ("history", "stimulus", "current", "population")
    sets = {"random init": (rand, everything)}
    if trained:
        feats = {s: representations(model, dataset, rid, samples[s], batch_size, device) for s in splits}
        sets.update({"history": (feats, ("history",)), "+ stimulus": (feats, ("history", "stimulus")),
                     "+ current window": (feats, ("history", "stimulus", "current")),
                     "+ population vector": (feats, everything)})
    return {row: {s: np.concatenate([source[s][k] for k in kinds], 1) for s in splits}
            for row, (source, kinds) in sets.items()}


def probe_results(features, samples, fraction=1.0):
    """The probe table: ridge read-outs of `probe_features`, fitted on the first `fraction` of the
    training samples (nested blocks of time), chosen on valid, scored on test."""
    keep = samples["train"].in_head(fraction)
    samples = {**samples, "train": samples["train"].head(fraction)}
    return {row: linear_readout({**x, "train": x["train"][keep]}, samples) for row, x in features.items()}


def linear_readout(x, samples):
    """Ridge (logistic for class labels) read-outs of features x[split] (n, features), fitted on
    train for each penalty, chosen on valid by `choose`."""
    candidates = []
    for alpha in (0.1, 1.0, 10.0, 100.0, 1000.0):
        models = [make_pipeline(StandardScaler(), LogisticRegression(C=1 / alpha, max_iter=1000) if c
                                else Ridge(alpha=alpha)).fit(x["train"], samples["train"].values[:, k])
                  for k, c in enumerate(samples["classes"])]
        candidates.append(({"alpha": alpha}, *(np.stack([m.predict(x[s]) for m in models], 1)
                                               for s in ("valid", "test"))))
    return choose(candidates, samples["valid"], samples["test"], samples["targets"], samples["classes"])


def checkpoint_candidates(run_dir, data_path, samples, targets, device="cpu"):
    """`choose` candidates ({"checkpoint": file, ...}, valid, test predictions) of a decoding run's
    best.pt (first) and each variable's best-<variable>.pt (`train.best_files`): which step
    decodes a variable best is chosen on valid like every other setting. A file saved at a step
    already listed holds the same weights and is not decoded again. Then the mean of these
    files' predictions ({"checkpoint": "mean", "files": [...]}; regression targets: an ensemble of
    steps), and with the Wiener filter inside, each candidate again with the transformer's
    correction to the filter weighted by CORRECTION (a noisy correction costs less when shrunk;
    the filter alone is never a candidate). Returns (candidates, the filter alone as a candidate
    of its own row, or None unless every target has it: what the transformer adds is the gap)."""
    run_dir = Path(run_dir)
    _, model, dataset, recordings = load_model(run_dir / "best.pt", [data_path], device)
    rid = recordings.recording_ids[0]
    out, steps = [], set()
    for file in ["best.pt"] + sorted(p.name for p in run_dir.glob("best-*.pt")):
        state = load_checkpoint(run_dir / file)[1]
        if state["step"] in steps:
            continue
        steps.add(state["step"])
        model.load_state_dict(state["model"])                                # same config, other step
        out.append(({"checkpoint": file}, *(neuroformer_predictions(model, dataset, rid, samples[s], targets,
                                                                     device=device) for s in ("valid", "test"))))
    regression = [k for k, n in enumerate(targets) if model.objectives[n] == "regression"]
    if len(out) > 1 and regression:
        mean = [out[0][1].copy(), out[0][2].copy()]                     # labels: best.pt's
        for m, s in zip(mean, (1, 2)):
            m[:, regression] = np.mean([c[s][:, regression] for c in out], 0)
        out.append(({"checkpoint": "mean", "files": [c[0]["checkpoint"] for c in out]}, *mean))
    linear = [k for k, n in enumerate(targets) if n in model.wiener_targets]
    if not linear:
        return out, None
    # the filter is fixed in training: the same in every file
    alone = [neuroformer_predictions(model, dataset, rid, samples[s], [targets[k] for k in linear], device=device,
                                     wiener=True) for s in ("valid", "test")]
    shrunk = []
    for params, *full in out:
        for weight in CORRECTION[1:]:
            blend = [p.copy() for p in full]
            for b, a in zip(blend, alone):
                b[:, linear] = a + weight * (b[:, linear] - a)
            shrunk.append(({**params, "correction": weight}, *blend))
    return out + shrunk, ({"wiener_filter": "alone"}, *alone) if len(linear) == len(targets) else None


def train_decoder(data_path, targets, work, mode, run=None, config=None, label_fraction=1.0, steps=None, seed=0,
                  device="cpu", trainable="all", calcium=0.0, without_movie=()):
    """Train (joint) or finetune a model whose behaviour heads decode `targets`; its run directory,
    whose best.pt is the step of least validation behaviour error (mean over targets; best-<target>.pt
    that of each target's own). `trainable` (see `TRAINABLE`):
    "units" learns only the unit embeddings (a new session), "heads" only the behaviour read-out.
    Validation runs at least MIN_EVALS times, however short the run. `calcium`: see `config_for`;
    `without_movie`: targets read out without the movie (`decode_config`)."""
    data = open_recording(data_path)
    if mode == "finetune":
        if run is None:
            raise InputError("--run", ("run", "finetune needs a pretrained run (--run RUN_DIR)"))
        base = load_checkpoint(checkpoint_file(run))[0]
    else:
        base = config_for(data_path, config, "decoding", targets, calcium)
    cfg = decode_config(base, data, targets, config or "config", without_movie)
    total = steps or cfg.train.max_steps              # a short finetuning run still has steps to choose from
    cfg.train.eval_every = max(1, min(cfg.train.eval_every, total // MIN_EVALS))
    out = Path(work) / f"{mode}{'' if trainable == 'all' else '-' + trainable}-f{label_fraction:g}-s{seed}"
    init = checkpoint_file(run) if mode == "finetune" else None
    resume = (out / "last.pt").exists()     # else an attempt stopped before its first checkpoint: start again
    train(cfg, [data_path], RunOptions(out, max_steps=steps, seed=seed, device=device,
                                       resume=resume, overwrite=not resume, init=init,
                                       train_fraction=label_fraction, trainable=trainable,
                                       select="behavior_error"))
    return out


def decode(data_path, targets, out, run=None, mode="joint", config=None, label_fraction=1.0, baselines=BASELINES,
           steps=None, seed=0, device="cpu", bin_size=0.05, progress=True, trainable="all", calcium=0.0,
           without_movie=()):
    """Decode `targets` with Neuroformer (`mode`) and `baselines`; writes OUT (JSON, its provenance
    the model's config and `seed`) and figures beside it, returns the report. `calcium` > 0: the
    derived config's behaviour heads read that many seconds of ΔF/F as calcium tokens;
    `without_movie`: targets (of `targets`) read out without the movie."""
    if mode not in MODES:
        raise InputError("--mode", ("mode", f"unknown {mode!r} (one of {', '.join(MODES)})"))
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise InputError("--baselines", ("baselines", f"unknown {unknown} (choose from {', '.join(BASELINES)})"))
    data_path, out = Path(data_path), Path(out)
    data = open_recording(data_path)
    targets = resolve_names(data, targets, data_path)
    without_movie = resolve_names(data, without_movie, data_path)
    if set(without_movie) - set(targets):
        raise InputError("--without-movie", ("target", f"{sorted(set(without_movie) - set(targets))} not among the "
                                                       f"targets {targets}"))
    if without_movie and mode in ("probe", "baselines"):
        raise InputError("--without-movie", ("mode", f"a trained read-out (joint or finetune), not mode {mode}"))
    if mode == "baselines" and not baselines:
        raise InputError("--baselines", ("baselines", "mode baselines needs at least one baseline"))
    if calcium and mode in ("finetune", "probe"):
        raise InputError("--calcium-tokens", ("calcium tokens", f"{mode} keeps the pretrained run's config"))
    if mode == "probe" and run is None:
        raise InputError("--run", ("run", "probes read a pretrained run's representations (--run RUN_DIR)"))
    work = out.with_suffix("")
    if mode == "probe":
        cfg = load_checkpoint(checkpoint_file(run))[0]
        shown = gaze_targets(cfg, data, targets, run)
        if shown:
            raise InputError("--target", ("target", f"{', '.join(shown)}: the run's frames are shifted by it, so its "
                                                    "representations show it"))
    elif mode == "baselines":
        cfg = config_for(data_path, config, "decoding", targets, calcium)
    else:
        run_dir = train_decoder(data_path, targets, work, mode, run, config, label_fraction, steps, seed, device,
                                trainable, calcium, without_movie)
        cfg = load_checkpoint(run_dir / "best.pt")[0]
    samples = decode_samples(data, targets, window_spec(cfg), data_path)
    samples["train"] = samples["train"].head(label_fraction)
    models = baseline_results(data, samples, baselines, bin_size, seed, progress)
    probes = None
    if mode == "probe":
        probes = probe_results(probe_features(run, data_path, samples, seed, device), samples)
    elif mode != "baselines":
        candidates, alone = checkpoint_candidates(run_dir, data_path, samples, targets, device)
        own = {"neuroformer": candidates, "neuroformer, best.pt": candidates[:1]}
        if alone is not None:
            own["neuroformer, filter alone"] = [alone]
        models = {**{name: choose(c, samples["valid"], samples["test"], targets, samples["classes"])
                     for name, c in own.items()}, **models}
    table = probes if probes is not None else models
    novel = novel_stimulus(data, samples["test"])
    if novel is not None:
        for results in [*models.values(), *(probes or {}).values()]:
            for k, t in enumerate(targets):
                results[t].update(by_stimulus(results[t], samples["test"], k, novel))
    report = {"recording": str(data_path), "targets": targets, "mode": mode, "run": str(run) if run else None,
              "label_fraction": label_fraction, "trainable": trainable, "seed": seed, "bin_s": bin_size,
              "baseline_input": baseline_input(data),
              "samples": {s: int(len(samples[s].times)) for s in ("train", "valid", "test")},
              "test_samples_of_novel_stimuli": None if novel is None else int(novel.sum()),
              "results": {t: {m: _public(table[m][t]) for m in table} for t in targets}}
    if probes is not None:
        report["baselines"] = {t: {m: _public(models[m][t]) for m in models} for t in targets}
    report = write_result(out, report, cfg, seed)
    traces_figure({m: {t: table[m][t]["_test_prediction"] for t in targets} for m in table}, samples["test"], targets,
                  out.with_suffix(".png"))
    return report


def format_report(report):
    """Test Pearson r (R²), or accuracy (balanced) for class labels, per model and target."""
    targets = report["targets"]
    lines = [f"{'model':<26}" + "".join(f"{t:>24}" for t in targets)]
    for model in report["results"][targets[0]]:
        cells = [report["results"][t][model] for t in targets]
        lines.append(f"{model:<26}" + "".join(
            f"{c['test_r']:>14.3f} ({c['test_r2']:+.2f})" if "test_r" in c else
            f"{c['test_accuracy']:>14.3f} ({c['test_balanced_accuracy']:.2f})" for c in cells))
    text = "test Pearson r (R²); class labels: accuracy (balanced):\n" + "\n".join(lines)
    if report.get("test_samples_of_novel_stimuli"):
        lines = [f"{'model':<26}" + "".join(f"{t:>24}" for t in targets)]
        for model in report["results"][targets[0]]:
            cells = [[v for k, v in report["results"][t][model].items() if k.endswith("_stimuli")] for t in targets]
            lines.append(f"{model:<26}" + "".join(f"{seen:>15.3f} / {novel:.3f}" for seen, novel in cells))
        text += "\n\non test trials of stimuli seen in training / novel stimuli (r; balanced accuracy):\n" + \
            "\n".join(lines)
    return text


def _public(result):
    return {k: v for k, v in result.items() if not k.startswith("_")}


def traces_figure(predictions, test, targets, path, seconds=20.0):
    """Decoded against true traces over the first `seconds` of the test split, one panel per target."""
    t = test.times
    show = t < t[0] + seconds if len(t) else t.astype(bool)
    fig, axes = subplots(len(targets), 1, figsize=(9, 2.2 * len(targets)), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[:, 0], targets)):
        ax.plot(t[show], test.values[show, k], color="k", lw=1.5, label="recorded")
        for model, pred in predictions.items():
            ax.plot(t[show], pred[name][show], lw=0.9, label=model)
        ax.set_ylabel(name, fontsize=8)
    axes[0, 0].legend(fontsize=6, ncol=4)
    axes[-1, 0].set_xlabel("time (s), test split")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
