"""Training: AdamW with warm-up and cosine decay, validation, atomic checkpoints, exact resume, DDP.

Window order is a pure function of (seed, epoch): each epoch draws its random windows from
torch_brain's RandomFixedWindowSampler with a generator seeded by both, DDP rank r takes every
world-th batch, and a resumed run skips the batches it had done. Checkpoints hold only tensors
and plain types, so `torch.load(weights_only=True)` reads them.
"""
import json
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .config import config_from_dict
from .data.objects import Interval, RandomFixedWindowSampler, SequentialFixedWindowSampler
from .data.recording import open_recording, resolve_variable
from .data.vocab import UnitVocab
from .data.windows import RecordingSet, WindowDataset, WindowSpec, collate_windows
from .errors import InputError
from .features import compute_features
from .io import atomic_path, remove_temporaries
from .model import Neuroformer, metrics_from_sums


def uses_cached_features(cfg):
    return cfg.window.frames > 0 and cfg.model.backbone.name == "resnet18" and cfg.model.backbone.frozen


def window_spec(cfg):
    w = cfg.window
    return WindowSpec(current=w.current, history=w.history, frames=w.frames, behavior=w.behavior,
                      variables=tuple(cfg.variables(False) + cfg.variables(True)), dt_res=w.dt_res,
                      targets=tuple(cfg.variables(True)), target_lag=w.target_lag,
                      features=cfg.model.backbone.tag if uses_cached_features(cfg) else "")


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
    if uses_cached_features(cfg):
        for path in data_paths:
            compute_features(path, cfg.model.backbone)
    dataset = WindowDataset(recordings, window_spec(cfg), vocab)
    _check_channels(cfg, recordings, dataset)
    frame_shape = dataset.frame_size
    names = cfg.variables(False) + cfg.variables(True)
    if stats is None:
        stats = behavior_stats(recordings, names, fraction)
    model = Neuroformer(cfg, len(dataset.vocab), frame_shape=frame_shape, behavior_stats=stats)
    return recordings, dataset, model


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


def epoch_batches(recordings, spec, split, batch_size, seed, epoch, rank=0, world=1, fraction=1.0):
    """This rank's batches of random windows for (seed, epoch): a list of lists of indices,
    from the first `fraction` of each recording's split. A block too short for one batch (a
    few-shot fraction) is passed over again, with new offsets, until it fills one per rank."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    intervals = {rid: first_fraction(iv, fraction) for rid, iv in recordings.get_sampling_intervals(split).items()}
    sampler = RandomFixedWindowSampler(sampling_intervals=intervals, window_length=spec.length, generator=generator)
    try:
        indices = list(sampler)
    except ValueError:                          # torch_brain: every interval shorter than a window
        return []
    while indices and len(indices) < batch_size * world:
        indices += list(sampler)
    batches = [indices[i:i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]
    return batches[rank::world][:len(batches) // world]


def tiling_batches(recordings, spec, batch_size, limit, split="valid"):
    """The first `limit` batches of a sequential tiling of a split (deterministic), spread over
    the whole split when it holds more windows."""
    sampler = SequentialFixedWindowSampler(sampling_intervals=recordings.get_sampling_intervals(split),
                                           window_length=spec.length, step=spec.current, drop_short=True)
    indices = list(sampler)
    stride = max(1, len(indices) // max(1, limit * batch_size))
    indices = indices[::stride][:limit * batch_size]
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def lr_lambda(warmup, total):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def to_device(batch, device):
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if torch.is_tensor(batch) else batch


def evaluate(model, dataset, batches, device):
    """Summed metrics over `batches` (lists of indices), then `metrics_from_sums`."""
    was_training = model.training
    model.eval()
    sums = {}
    with torch.no_grad(), _autocast(device):
        for idx in batches:
            out = model(to_device(collate_windows([dataset[i] for i in idx]), device))
            for k, v in out.items():
                if k != "loss":
                    sums[k] = sums.get(k, 0) + float(v)
            sums["loss_sum"] = sums.get("loss_sum", 0) + float(out["loss"])
            sums["batches"] = sums.get("batches", 0) + 1
    model.train(was_training)
    metrics = metrics_from_sums(sums)
    metrics["loss"] = sums.get("loss_sum", 0) / max(1, sums.get("batches", 0))
    return metrics


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else nullcontext()


# parameters that learn, by top-level module (None: all). units: a new session's unit embeddings
# and output rows; heads: the behaviour read-out alone, on a frozen body (few labels)
TRAINABLE = {"all": None, "units": ("unit_emb", "unit_head"),
             "heads": ("query", "population_in", "readout")}


@dataclass
class RunOptions:
    out: Path
    max_steps: int | None = None
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    init: Path | None = None          # start from this checkpoint's weights (finetuning; see `load_matching`)
    train_fraction: float = 1.0       # train on the first fraction of the training split (few-shot)
    trainable: str = "all"            # a key of TRAINABLE: which parameters learn
    select: str = "loss"              # validation metric (lower is better) that picks best.pt (see `best_files`)
    overwrite: bool = False           # replace a run already in `out` (else only `resume` may use it)


def train(cfg, data_paths, opts):
    """Train `cfg` on `data_paths`; returns the final validation metrics (rank 0)."""
    rank, world = _init_distributed(opts.device)
    device = torch.device(f"cuda:{rank % max(1, torch.cuda.device_count())}" if opts.device == "cuda" else opts.device)
    out = Path(opts.out)
    total = opts.max_steps or cfg.train.max_steps
    _check_run_folder(out, opts)
    state = _load_for_resume(out / "last.pt", cfg) if opts.resume else None
    vocab = UnitVocab.from_state_dict(state["vocab"]) if state else None
    stats = state["behavior_stats"] if state else None
    if opts.trainable not in TRAINABLE:
        raise InputError("trainable", ("trainable", f"unknown {opts.trainable!r} ({', '.join(TRAINABLE)})"))
    if opts.init and not state:
        vocab = UnitVocab.from_state_dict(load_checkpoint(opts.init)[1]["vocab"])
        for path in data_paths:                                 # units of a new session join the vocabulary
            vocab.extend(open_recording(path).units.id.astype(str))
    torch.manual_seed(opts.seed)
    recordings, dataset, model = build(cfg, data_paths, vocab, stats, opts.train_fraction)
    if opts.init and not state:
        load_matching(model, dataset.vocab, opts.init)
    for name, p in model.named_parameters():
        p.requires_grad_(TRAINABLE[opts.trainable] is None or name.split(".")[0] in TRAINABLE[opts.trainable])
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.warmup_steps, total))
    step, epoch, done, best = 0, 0, 0, {}
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, done, best = state["step"], state["epoch"], state["batches_done"], state.get("best_valid")
        if best is None:                                    # a last.pt written before best-<variable>.pt
            best = {"best.pt": state["best_valid_loss"]}
        torch.set_rng_state(state["torch_rng"])
        opts.seed = state["seed"]
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    spec = dataset.spec
    valid = tiling_batches(recordings, spec, cfg.train.batch_size, cfg.train.eval_batches)
    if not valid:
        raise InputError(", ".join(map(str, data_paths)), (
            "valid_domain", f"holds no {spec.length:g} s window: validation chooses best.pt"))
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, step)
    bar = tqdm(total=total, initial=step, desc="training", unit="step", disable=rank != 0)
    last_valid = None
    while step < total:
        batches = epoch_batches(recordings, spec, "train", cfg.train.batch_size, opts.seed, epoch, rank, world,
                                opts.train_fraction)
        if not batches:
            raise InputError(", ".join(map(str, data_paths)), (
                "train_domain", f"the first {opts.train_fraction:g} of the training split holds no "
                                f"{spec.length:g} s window"))
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches[done:], collate_fn=collate_windows,
                                             num_workers=cfg.train.num_workers,
                                             generator=torch.Generator().manual_seed(opts.seed))
        for batch in loader:
            with _autocast(device):
                result = ddp(to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            result["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                       cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            step, done = step + 1, done + 1
            bar.update(1)
            if rank == 0:
                row = {"step": step, "split": "train", "loss": float(result["loss"].detach()),
                       "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       **metrics_from_sums({k: float(v) for k, v in result.items() if k != "loss"})}
                _append(metrics_path, row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            if step % cfg.train.eval_every == 0 or step == total:
                last_valid = evaluate(model, dataset, valid, device)
                if rank == 0:
                    _append(metrics_path, {"step": step, "split": "valid", **last_valid})
                    for file, metric in best_files(last_valid, opts.select).items():
                        if last_valid[metric] < best.get(file, float("inf")):
                            best[file] = last_valid[metric]
                            _save(out / file, model, optimizer, scheduler, cfg, dataset, step, epoch, done, best, opts)
            if rank == 0 and (step % cfg.train.checkpoint_every == 0 or step == total):
                _save(out / "last.pt", model, optimizer, scheduler, cfg, dataset, step, epoch, done, best, opts)
            if step >= total:
                break
        else:
            epoch, done = epoch + 1, 0
    bar.close()
    if world > 1:
        dist.destroy_process_group()
    return last_valid


def best_files(valid, select):
    """Checkpoint file -> the validation metric whose least value it keeps: best.pt by `select`;
    selecting by "behavior_error" (the mean over variables) also keeps best-<variable>.pt by each
    variable's own error, so every decoded variable can be read from its own best step."""
    files = {"best.pt": select}
    if select == "behavior_error":
        files.update({f"best-{k.split('.', 1)[1]}.pt": k for k in valid if k.startswith("behavior_error.")})
    return files


def _save(path, model, optimizer, scheduler, cfg, dataset, step, epoch, done, best, opts):
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "epoch": epoch, "batches_done": done, "seed": opts.seed, "best_valid": best,
        "torch_rng": torch.get_rng_state(), "config": cfg.to_dict(), "vocab": dataset.vocab.state_dict(),
        "behavior_stats": model.behavior_stats.tolist(),
        "frame_shape": list(dataset.frame_size or ()),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path):
    """A checkpoint (weights_only) -> (config, state)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, ("checkpoint", "does not exist"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, ("checkpoint", f"cannot be read ({type(err).__name__}: {err})")) from None
    return config_from_dict(state["config"], path), state


def load_matching(model, vocab, checkpoint):
    """Copy a checkpoint's weights into `model` wherever they fit: tensors of the same name and
    shape, unit rows by unit id, behaviour-variable rows (embeddings, normalisation) by variable
    name. New units, variables and heads keep their fresh initialisation."""
    old_cfg, state = load_checkpoint(checkpoint)
    old_vocab = UnitVocab.from_state_dict(state["vocab"])
    old_vars = old_cfg.variables(False) + old_cfg.variables(True)
    rows = {"unit_emb.weight": _row_map(vocab.words, old_vocab.index),
            "unit_head.weight": _row_map(vocab.words, old_vocab.index),
            "unit_head.bias": _row_map(vocab.words, old_vocab.index),
            "var_emb.weight": _row_map(list(model.var_index), {n: i for i, n in enumerate(old_vars)}),
            "behavior_stats": _row_map(list(model.var_index), {n: i for i, n in enumerate(old_vars)})}
    target = model.state_dict()
    same_targets = old_cfg.variables(True) == model.targets          # read-out k is target k's
    for name, value in state["model"].items():
        if name.startswith("readout.") and not same_targets:
            continue
        if name in rows and name in target:
            new, old = rows[name]
            target[name][new] = value[old]
        elif name in target and target[name].shape == value.shape:
            target[name] = value
    model.load_state_dict(target)


def _row_map(names, old_index):
    """(new rows, old rows) of the names both tables share."""
    pairs = [(i, old_index[n]) for i, n in enumerate(names) if n in old_index]
    return torch.tensor([p[0] for p in pairs], dtype=torch.long), torch.tensor([p[1] for p in pairs], dtype=torch.long)


def _check_run_folder(out, opts):
    """A run folder holding a run (best.pt or last.pt) is used only to resume, or replaced with
    `overwrite`; temporaries of a killed checkpoint write are removed."""
    if out.exists() and not out.is_dir():
        raise InputError(out, ("-o", "exists and is not a folder"))
    run_files = [p for p in out.glob("*") if p.suffix == ".pt" or p.name == "metrics.jsonl"] if out.exists() else []
    if any(p.name in ("best.pt", "last.pt") for p in run_files) and not (opts.resume or opts.overwrite):
        raise InputError(out, ("-o", "holds a run already: pass --resume to continue it or --overwrite to replace it"))
    if opts.overwrite and not opts.resume:
        for p in run_files:
            p.unlink()
    remove_temporaries(out)


def _flat(tree, prefix=""):
    """{"model.width": 64, ...} of a nested dict."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()} or {prefix: tree}


def _load_for_resume(path, cfg):
    saved_cfg, state = load_checkpoint(path)
    saved, now = _flat(saved_cfg.to_dict()), _flat(cfg.to_dict())
    diff = [f"{k.rstrip('.')} ({saved.get(k)!r} in the checkpoint, {now.get(k)!r} now)"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        raise InputError(path, ("config", f"the checkpoint was made with another config: {'; '.join(diff)}"))
    return state


def _append(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path, step):
    """On resume, forget metrics logged after the checkpoint (they are logged again)."""
    if path.exists():
        rows = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(r + "\n" for r in rows))


def _init_distributed(device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def load_model(checkpoint, data_paths, device="cpu"):
    """A trained model with its config and a window dataset over `data_paths` (vocabulary from
    the checkpoint; recordings with units it does not know are refused)."""
    cfg, state = load_checkpoint(checkpoint)
    recordings, dataset, model = build(cfg, data_paths, UnitVocab.from_state_dict(state["vocab"]),
                                       state["behavior_stats"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise InputError(checkpoint, ("model", f"weights do not fit the config ({err})")) from None
    return cfg, model.to(device).eval(), dataset, recordings


def checkpoint_file(run):
    """A run directory's best.pt, or `run` itself when it is a checkpoint file."""
    run = Path(run)
    return run / "best.pt" if run.is_dir() else run


def load_run(run, data_path, device="cpu"):
    """`load_model` of a run directory (its best.pt) or a checkpoint file, on one recording; the
    device is returned with it."""
    return load_model(checkpoint_file(run), [data_path], device) + (device,)
