"""Training: AdamW with warm-up and cosine decay, validation, atomic checkpoints, exact resume, DDP.

Window order is a pure function of (seed, epoch): each epoch draws its random windows from
torch_brain's RandomFixedWindowSampler with a generator seeded by both, DDP rank r takes every
world-th batch, and a resumed run skips the batches it had done. Checkpoint files are
written and read by `checkpoints`.
"""
import copy
import json
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .assembly import build
from .checkpoints import load_checkpoint, load_matching, save_checkpoint
from .data.objects import RandomFixedWindowSampler, SequentialFixedWindowSampler
from .data.recording import first_fraction, open_recording
from .data.vocab import UnitVocab
from .data.windows import collate_windows
from .errors import InputError
from .io import atomic_path, remove_temporaries
from .model import GLM_FILTERS, metrics_from_sums
from .provenance import write_result
from .wiener import fit_wiener


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


def tiling_windows(recordings, spec, split="valid", fraction=1.0):
    """Every window of a sequential tiling of a split's first `fraction` (step: one current
    window); none when every interval is shorter than a window."""
    intervals = {rid: first_fraction(iv, fraction) for rid, iv in recordings.get_sampling_intervals(split).items()}
    try:
        return list(SequentialFixedWindowSampler(sampling_intervals=intervals, window_length=spec.length,
                                                 step=spec.current, drop_short=True))
    except ValueError:                          # torch_brain: every interval shorter than a window
        return []


def tiling_batches(recordings, spec, batch_size, limit, split="valid"):
    """The first `limit` batches of a sequential tiling of a split (deterministic), spread over
    the whole split when it holds more windows."""
    indices = tiling_windows(recordings, spec, split)
    stride = max(1, len(indices) // max(1, limit * batch_size))
    indices = indices[::stride][:limit * batch_size]
    return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]


def lr_lambda(warmup, total, glm_steps=0):
    """Linear warm-up, then cosine decay to 0.1x; with `glm_steps`, the GLM-only phase and the rest
    each have their own warm-up and decay (the GLM converges before the transformer starts)."""
    def phase(step, length):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, length - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def f(step):
        return phase(step, glm_steps) if step < glm_steps else phase(step - glm_steps, total - glm_steps)
    return f


def glm_schedule(cfg, schedule):
    """The GLM's learning-rate factor: `schedule` at `train.glm_lr`, and once the GLM-only phase of
    `train.glm_steps` is over, at the transformer's `train.lr` (the fitted GLM is only refined)."""
    after = cfg.train.lr / cfg.train.glm_lr if cfg.train.glm_steps else 1.0
    return lambda step: schedule(step) * (after if step >= cfg.train.glm_steps else 1.0)


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


# the GLM inside a point-process model (own learning rate): baselines, coupling, stimulus and behaviour
# filters, the adapting stimulus filter's prior statistics
GLM_PARAMETERS = ("log_rate0", "stim_prior", *GLM_FILTERS)


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
    if total < cfg.train.max_steps and cfg.train.glm_steps >= total:   # cut short: half for the transformer
        cfg = copy.deepcopy(cfg)
        cfg.train.glm_steps = total // 2
    _check_run_folder(out, opts)
    state = _load_for_resume(out / "last.pt", cfg) if opts.resume else None
    vocab = UnitVocab.from_state_dict(state["vocab"]) if state else None
    stats = state["behavior_stats"] if state else None
    if opts.trainable not in TRAINABLE:
        raise InputError("trainable", ("trainable", f"unknown {opts.trainable!r} ({', '.join(TRAINABLE)})"))
    if opts.init and not state:
        init_cfg, init_state = load_checkpoint(opts.init)
        vocab = UnitVocab.from_state_dict(init_state["vocab"])
        for path in data_paths:                                 # units of a new session join the vocabulary
            vocab.extend(open_recording(path).units.id.astype(str))
    torch.manual_seed(opts.seed)
    recordings, dataset, model = build(cfg, data_paths, vocab, stats, opts.train_fraction)
    if opts.init and not state:
        load_matching(model, dataset.vocab, opts.init)
    spec = dataset.spec
    valid = tiling_batches(recordings, spec, cfg.train.batch_size, cfg.train.eval_batches)
    if not valid:
        raise InputError(", ".join(map(str, data_paths)), (
            "valid_domain", f"holds no {spec.length:g} s window: validation chooses best.pt"))
    wiener_fit = None
    # fitted on a fresh run; a run fine-tuned from a checkpoint without the filter keeps none (its
    # read-out already predicts the whole value)
    if model.wiener_targets and not state and (not opts.init or init_cfg.model.wiener):
        windows = tiling_windows(recordings, spec, "train", opts.train_fraction)
        wiener_fit = fit_wiener(model, dataset, windows, cfg.train.batch_size) if windows else None
    for name, p in model.named_parameters():
        p.requires_grad_(TRAINABLE[opts.trainable] is None or name.split(".")[0] in TRAINABLE[opts.trainable])
    model.to(device)
    def in_glm(name):
        return name.split(".")[0] in GLM_PARAMETERS
    glm = [p for n, p in model.named_parameters() if p.requires_grad and in_glm(n)]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and not in_glm(n)]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2 and not in_glm(n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0},
                                   {"params": glm, "weight_decay": 0.0, "lr": cfg.train.glm_lr}], lr=cfg.train.lr)
    schedule = lr_lambda(cfg.train.warmup_steps, total, cfg.train.glm_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule, schedule, glm_schedule(cfg, schedule)])
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
    metrics_path = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, step)
        write_result(out / "run.json", {"data": data_paths, "step": step, "options": vars(opts),
                                        **({"wiener_filter": wiener_fit} if wiener_fit else {})}, cfg, opts.seed)
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
                result = ddp(to_device(batch, device), glm_only=step < cfg.train.glm_steps)
            if not torch.isfinite(result["loss"]):      # stop before the weights turn to NaN
                raise InputError(out, ("loss", f"{float(result['loss'].detach())} at step {step + 1}: training diverged "
                                               "(lower train.lr or train.glm_lr, or check the config's values)"))
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
            if step % cfg.train.eval_every == 0 or step in (total, cfg.train.glm_steps):
                last_valid = evaluate(model, dataset, valid, device)
                if rank == 0:
                    _append(metrics_path, {"step": step, "split": "valid", **last_valid})
                    for file, metric in best_files(last_valid, opts.select).items():
                        if last_valid[metric] < best.get(file, float("inf")):
                            best[file] = last_valid[metric]
                            save_checkpoint(out / file, model, optimizer, scheduler, cfg, dataset, step, epoch, done, best, opts)
            if rank == 0 and (step % cfg.train.checkpoint_every == 0 or step == total):
                save_checkpoint(out / "last.pt", model, optimizer, scheduler, cfg, dataset, step, epoch, done, best, opts)
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
    """The checkpoint's state, if it was made with `cfg`; a setting the checkpoint predates is set
    in `cfg` to what the run was made with (the resumed run goes on as it began)."""
    saved_cfg, state = load_checkpoint(path)
    for key in state["predates"]:
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, getattr(getattr(saved_cfg, section), name))
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
