"""Figures, drawn without pyplot: a `matplotlib.figure.Figure` saves through the Agg canvas, so
making one neither needs a display nor changes the backend or the figures of a caller that uses
pyplot, and nothing is left open to close."""
import numpy as np
from matplotlib.figure import Figure

from .data.recording import behavior_variables, movie_frame_dataset, open_recording


def subplots(nrows=1, ncols=1, figsize=None, **kwargs):
    """(figure, axes) like `pyplot.subplots`, on a figure outside pyplot."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def recording_overview(path, out_png, seconds=4.0):
    """Movie frames, spike raster and behaviour over the first trial (or the first seconds)."""
    data = open_recording(path)
    try:
        keys = data.keys()
        t0 = float(data.trials.start[0]) if "trials" in keys and len(data.trials) else float(data.domain.start[0])
        t1 = t0 + seconds
        variables = behavior_variables(data)
        n_rows = 2 + len(variables)
        fig = Figure(figsize=(10, 2 + 1.2 * n_rows))
        grid = fig.add_gridspec(n_rows, 4, height_ratios=[1.3, 3] + [0.8] * len(variables))
        if "movies" in keys:
            pres = data.stimulus
            shown = np.flatnonzero((pres.start < t1) & (pres.end > t0))
            if len(shown):
                k = shown[0]
                first = data.movie_table.first_frame[pres.movie_index[k]]
                rate = data.movie_table.frame_rate[pres.movie_index[k]]
                for j, dt in enumerate(np.linspace(0, seconds * 0.9, 4)):
                    i = int(max(0.0, t0 + dt - pres.start[k]) * rate)
                    ax = fig.add_subplot(grid[0, j])
                    ax.imshow(movie_frame_dataset(data)[first + i], cmap="gray", vmin=0, vmax=255)
                    ax.set_title(f"t = {t0 + dt:.2f} s", fontsize=8)
                    ax.axis("off")
        window = data.spikes.slice(t0, t1, reset_origin=False)
        ax = fig.add_subplot(grid[1, :])
        ax.scatter(window.timestamps, window.unit_index, s=1, c="k", marker="|")
        ax.set_ylabel("unit")
        ax.set_xlim(t0, t1)
        ax.set_title(f"{data.session.id}: {len(data.units)} units")
        for r, name in enumerate(variables):
            group, field = name.split(".")
            series = getattr(data.behavior, group).slice(t0, t1, reset_origin=False)
            ax = fig.add_subplot(grid[2 + r, :])
            ax.plot(series.timestamps, getattr(series, field), lw=1)
            ax.set_ylabel(name, fontsize=8)
            ax.set_xlim(t0, t1)
        ax.set_xlabel("time (s)")
        fig.tight_layout()
        fig.savefig(out_png, dpi=110)
    finally:
        data.file.close()
    return out_png


def training_curves(metrics_jsonl, out_png, baseline=None):
    """Training loss and validation NLL per spike against step (and a baseline's NLL)."""
    import json

    rows = [json.loads(line) for line in open(metrics_jsonl)]
    train = [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]
    valid = [(r["step"], r["nll_per_spike"]) for r in rows if r["split"] == "valid"]
    fig, ax = subplots(figsize=(6, 3.5))
    if train:
        steps, loss = np.array(train).T
        k = max(1, len(loss) // 50)
        ax.plot(steps, loss, color="0.75", lw=0.8, label="train loss (per target)")
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), color="0.4", lw=1)
    if valid:
        ax.plot(*np.array(valid).T, "o-", color="C0", label="valid NLL per spike")
    if baseline is not None:
        ax.axhline(baseline, color="C3", ls="--", label="empirical frequencies")
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


def rasters(panels, n_units, out_png):
    """Spike rasters of one trial per row group: panels {row title: {model: (times, units)}}."""
    names = list(next(iter(panels.values())))
    fig, axes = subplots(len(names), len(panels), figsize=(5 * len(panels), 1.6 * len(names) + 0.6),
                             squeeze=False, sharex="col", sharey=True)
    for c, (title, runs) in enumerate(panels.items()):
        for r, name in enumerate(names):
            t, u = runs[name]
            ax = axes[r, c]
            ax.scatter(t, u, s=0.5, c="k", marker="|", lw=0.5)
            ax.set_ylim(-0.5, n_units - 0.5)
            ax.set_ylabel(f"{name}\nunit", fontsize=8)
            if r == 0:
                ax.set_title(title, fontsize=9)
        axes[-1, c].set_xlabel("time from trial start (s)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


def example_psths(psths, units, bin_size, title, out_png, unit_label="Hz"):
    """PSTHs (Hz, or any trial-averaged signal in `unit_label`) of example units: psths {model: (bins, N)}."""
    fig, axes = subplots(len(units), 1, figsize=(8, 1.3 * len(units) + 0.5), sharex=True, squeeze=False)
    for ax, u in zip(axes[:, 0], units):
        for j, (name, p) in enumerate(psths.items()):
            ax.plot(np.arange(len(p)) * bin_size, p[:, u], lw=1.2 if j == 0 else 1,
                    color="k" if j == 0 else f"C{j - 1}", label=name)
        ax.set_ylabel(f"unit {u}\n{unit_label}", fontsize=8)
    axes[0, 0].legend(fontsize=7, ncol=len(psths))
    axes[0, 0].set_title(title, fontsize=9)
    axes[-1, 0].set_xlabel("time from trial start (s)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


def correlation_scatter(per_neuron, out_png, ceilings=None):
    """Per-neuron PSTH correlation: Neuroformer against the GLM (or a histogram without one),
    one colour per row group; per_neuron {(group, model): r}."""
    groups = sorted({g for g, _ in per_neuron})
    fig, ax = subplots(figsize=(4.5, 4.2))
    for j, g in enumerate(groups):
        nf = per_neuron[(g, "neuroformer")]
        if (g, "glm") in per_neuron:
            ax.scatter(per_neuron[(g, "glm")], nf, s=10, color=f"C{j}", label=g)
        else:
            ax.hist(nf[np.isfinite(nf)], bins=20, alpha=0.5, color=f"C{j}", label=g)
    if any(m == "glm" for _, m in per_neuron):
        ax.plot([-1, 1], [-1, 1], color="0.6", lw=0.8)
        ax.set_xlim(-0.2, 1)
        ax.set_ylim(-0.2, 1)
        ax.set_xlabel("GLM PSTH r")
        ax.set_ylabel("Neuroformer PSTH r")
    else:
        ax.set_xlabel("Neuroformer PSTH r")
    ax.legend(fontsize=8)
    ax.set_title("per-neuron PSTH correlation with held-out trials", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


def connectivity_figure(matrices, truth, out_png):
    """Each (target x source) matrix as an image, diagonal blanked; the true W first if known."""
    panels = ({"true W": truth} if truth is not None else {}) | matrices
    fig, axes = subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, m) in zip(axes[0], panels.items()):
        m = np.array(m, dtype=float)
        np.fill_diagonal(m, np.nan)
        if "attention" in name:
            m = m - 1.0                                      # chance level at 0
        lim = np.nanpercentile(np.abs(m), 99) or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("source unit", fontsize=7)
        ax.set_ylabel("target unit", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


def stimulus_maps(maps, unit_ids, out_png, n=12):
    """Neuron x patch attention maps (relative to chance) of the `n` units with the most structured maps."""
    spread = maps.reshape(len(maps), -1).std(1)
    units = np.argsort(-spread)[:n]
    cols = min(6, len(units))
    rows = -(-len(units) // cols)
    fig, axes = subplots(rows, cols, figsize=(2.2 * cols, 1.6 * rows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, u in zip(axes.ravel(), units):
        ax.imshow(maps[u], cmap="magma", interpolation="nearest")
        ax.set_title(str(unit_ids[u]), fontsize=7)
    fig.suptitle("stimulus attention (unit read-out, relative to chance)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return out_png


def per_neuron_scatter(rows, out_png):
    """Per-neuron bits/spike of the model against the GLM's (or a histogram without a GLM), one
    panel per row of a score report (`rows`: name -> {"neuroformer": [...], "glm": [...]})."""
    fig, axes = subplots(1, len(rows), figsize=(4 * len(rows), 4), squeeze=False)
    for ax, (name, scores) in zip(axes[0], rows.items()):
        model = np.array([np.nan if v is None else v for v in scores["neuroformer"]], dtype=float)
        if "glm" in scores:
            glm = np.array([np.nan if v is None else v for v in scores["glm"]], dtype=float)
            ax.scatter(glm, model, s=10, c="k")
            lo, hi = np.nanmin([glm, model]), np.nanmax([glm, model])
            ax.plot([lo, hi], [lo, hi], c="grey", lw=1)
            ax.set_xlabel("GLM bits/spike")
            ax.set_ylabel("Neuroformer bits/spike")
        else:
            ax.hist(model[np.isfinite(model)], bins=30, color="k")
            ax.set_xlabel("Neuroformer bits/spike")
        ax.set_title(f"{name}: per neuron")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return out_png
