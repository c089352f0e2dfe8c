"""The floor every model must beat: empirical unit frequencies and the Δ/END histogram.

Both distributions are counted on training windows (add-one smoothed) and scored with the
same NLL per spike as the model (docs/design.md §2).
"""
import torch

from .data.vocab import SPECIALS
from .data.windows import IGNORE, collate_windows
from .model import metrics_from_sums


def frequency_baseline(dataset, train_batches, eval_batches, n_dt_classes):
    """Validation metrics of p(Δ or END) and p(unit) fixed to their training frequencies."""
    dt_counts = torch.ones(n_dt_classes)
    unit_counts = torch.ones(len(dataset.vocab))
    unit_counts[:len(SPECIALS)] = 0
    for idx in train_batches:
        cur = collate_windows([dataset[i] for i in idx])["current"]
        dt, unit = cur["dt_target"], cur["unit_target"]
        dt_counts += torch.bincount(dt[dt != IGNORE], minlength=n_dt_classes).float()
        unit_counts += torch.bincount(unit[unit != IGNORE], minlength=len(unit_counts)).float()
    log_dt, log_unit = (dt_counts / dt_counts.sum()).log(), (unit_counts / unit_counts.sum()).log()
    end = n_dt_classes - 1
    sums = dict(nll_sum=0.0, n_spikes=0, unit_correct=0, unit_count=0, end_correct=0, end_count=0)
    for idx in eval_batches:
        batch = collate_windows([dataset[i] for i in idx])
        dt, unit = batch["current"]["dt_target"], batch["current"]["unit_target"]
        dt, unit = dt[dt != IGNORE], unit[unit != IGNORE]
        sums["nll_sum"] -= float(log_dt[dt].sum() + log_unit[unit].sum())
        sums["n_spikes"] += int(batch["n_spikes"].sum())
        sums["unit_correct"] += int((unit == unit_counts.argmax()).sum())
        sums["unit_count"] += len(unit)
        sums["end_correct"] += int((dt == end).sum()) if int(dt_counts.argmax()) == end else 0
        sums["end_count"] += int((dt == end).sum())
    return metrics_from_sums(sums)
