"""Checkpoints and runs on disk: saving a training state, reading it back, and loading a
trained model (or a run directory's best one) with its dataset.

Checkpoints hold only tensors and plain types, so `torch.load(weights_only=True)` reads them.
"""
from pathlib import Path

import torch

from .assembly import build
from .config import config_from_dict
from .data.vocab import UnitVocab
from .errors import InputError
from .io import atomic_path
from .model import OWN_HISTORY_STATES


PREDATES = {("model", "wiener"): False}      # settings added later -> what a checkpoint without them was made with


def save_checkpoint(path, model, optimizer, scheduler, cfg, dataset, step, epoch, done, best, opts):
    """Everything an exact resume needs (weights, optimiser, schedule, position in the epoch,
    random state), with the config, vocabulary and behaviour statistics to rebuild the model;
    written atomically."""
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
    state["predates"] = [f"{section}.{key}" for section, key in PREDATES if key not in state["config"].get(section, {})]
    for (section, key), then in PREDATES.items():
        state["config"].setdefault(section, {}).setdefault(key, then)
    weights = state.get("model", {})
    if "own_history_table" in weights:                      # its name at commit ae0b509
        weights["wiener_own_history"] = weights.pop("own_history_table")
    if "wiener_bias" in weights and "wiener_innovation" not in weights:     # a filter of counts alone
        weights["wiener_innovation"] = torch.zeros_like(weights["wiener_bias"])
        weights["wiener_own_history"] = torch.zeros(len(weights["unit_emb.weight"]), OWN_HISTORY_STATES)
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
        if name.startswith(("readout.", "wiener_")) and not same_targets:
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
