"""Figures (matplotlib, Agg backend)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .data.recording import behavior_variables, movie_frame_dataset, open_recording  # noqa: E402


def recording_overview(path, out_png, seconds=4.0):
    """Movie frames, spike raster and behaviour over the first trial (or the first seconds)."""
    data = open_recording(path)
    try:
        keys = data.keys()
        t0 = float(data.trials.start[0]) if "trials" in keys and len(data.trials) else float(data.domain.start[0])
        t1 = t0 + seconds
        variables = behavior_variables(data)
        n_rows = 2 + len(variables)
        fig = plt.figure(figsize=(10, 2 + 1.2 * n_rows))
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
        plt.close(fig)
    finally:
        data.file.close()
    return out_png


def training_curves(metrics_jsonl, out_png, baseline=None):
    """Training loss and validation NLL per spike against step (and a baseline's NLL)."""
    import json

    rows = [json.loads(line) for line in open(metrics_jsonl)]
    train = [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]
    valid = [(r["step"], r["nll_per_spike"]) for r in rows if r["split"] == "valid"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
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
    plt.close(fig)
    return out_png
