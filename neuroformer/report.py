"""`neuroformer report`: one self-contained HTML page of the results a folder holds.

Result files are recognised by their content wherever they lie under the folder: recordings
(HDF5 with spikes, units and a training split), training logs (JSON lines with step and split),
the JSON reports of `score`, `evaluate`, `decode` and `demo`, and connectivity matrices (.npz
with unit ids, split and combine). Each kind gets a section only when present, and every table
is followed by the definitions of its numbers. Figures are embedded as base64 PNG data URIs;
the page has no script and no external reference, so it works offline as one file.
"""
import base64
import datetime
import html
import io
import json
import math
import tempfile
from pathlib import Path

import h5py
import numpy as np

from .data.info import summarize
from .errors import InputError
from .io import atomic_path
from .plots import connectivity_figure, recording_overview, training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JSON_KINDS = (("demo", {"stages_s", "valid"}), ("simulation", {"simulated", "summary", "rows"}),
              ("score", {"rows", "null", "unit_ids"}), ("decoding", {"targets", "results"}))
BITS_PER_SPIKE = ("bits/spike: (log-likelihood of the model − that of a homogeneous Poisson process with each "
                  "unit's training-split rate) / (spikes · ln 2), on the same 1 ms grid; 0 is no better than "
                  "the mean rates, positive is better.")
NLL_PER_SPIKE = ("NLL/spike: −[Σ log p(gap or END) + Σ log p(unit | gap)] / spikes, in nats (docs/design.md §2); "
                 "lower is better.")


# ---------------------------------------------------------------------- finding results

def find_results(root):
    """{kind: [(path, content)]} for every result file under `root` (hidden names skipped), in path order."""
    found = {kind: [] for kind in ("recording", "training", "score", "simulation", "connectivity", "decoding",
                                   "demo")}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            kind, content = recognise(path)
            if kind:
                found[kind].append((path, content))
    return found


def recognise(path):
    """(kind, content) of a result file by what it holds, or (None, None)."""
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5") and _is_recording(path):
        return "recording", None
    if suffix == ".jsonl":
        rows = _json_lines(path)
        return ("training", rows) if rows and {"step", "split"} <= rows[0].keys() else (None, None)
    if suffix == ".json":
        report = _json(path)
        kind = next((k for k, keys in JSON_KINDS if isinstance(report, dict) and keys <= report.keys()), None)
        return (kind, report) if kind else (None, None)
    if suffix == ".npz":
        matrices = _npz(path)
        return ("connectivity", matrices) if {"unit_ids", "split", "combine"} <= matrices.keys() else (None, None)
    return None, None


def _is_recording(path):
    try:
        with h5py.File(path, "r") as f:
            return {"spikes", "units", "train_domain"} <= f.keys()
    except OSError:
        return False


def _json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _json_lines(path):
    """The JSON objects of a JSON-lines file (an unreadable file or line ends it)."""
    rows = []
    try:
        for line in path.read_text().splitlines():
            rows.append(json.loads(line))
    except (OSError, UnicodeDecodeError, ValueError):
        pass
    return [r for r in rows if isinstance(r, dict)]


def _npz(path):
    try:
        with np.load(path) as arrays:
            return {k: arrays[k] for k in arrays.files}
    except (OSError, ValueError):
        return {}


def figure_files(kind, path, content):
    """The PNG files on disk that a result names or that its verb writes beside it."""
    if kind == "score":
        named = [content.get("figure")]
    elif kind == "simulation":
        named = content.get("figures") or []
    elif kind == "decoding":
        named = [path.with_suffix(".png")]
    elif kind == "connectivity":
        named = [f"{path.with_suffix('')}_matrices.png", f"{path.with_suffix('')}_stimulus.png"]
    else:
        named = []
    return [f.resolve() for f in (_beside(path, n) for n in named if n) if f is not None]


def _beside(report_path, named):
    """A named figure: the file of that name beside the report, else the path as written; None if neither."""
    for candidate in (report_path.parent / Path(named).name, Path(named)):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------- HTML pieces

def _text(value):
    """A cell's text: floats to 3 decimals, None as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table(header, rows, definitions):
    """A table of escaped cells and, under it, the definitions of its numbers."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_text(c))}</td>" for c in row) + "</tr>" for row in rows)
    notes = "".join(f"<li>{html.escape(d)}</li>" for d in definitions)
    return f'<table><tr>{head}</tr>{body}</table><ul class="definitions">{notes}</ul>'


def image(png, caption):
    """A PNG embedded as a data URI, with an escaped caption."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def images(files, root):
    """Every PNG of `files` (others skipped), captioned with its path under `root`."""
    pngs = [(f, f.read_bytes()) for f in files]
    return "".join(image(data, _name(f, root)) for f, data in pngs if data.startswith(PNG_SIGNATURE))


def rendered(plot, *args):
    """PNG bytes of a `neuroformer.plots` function, whose last argument is where it saves."""
    buffer = io.BytesIO()
    plot(*args, buffer)
    return buffer.getvalue()


def meta(**fields):
    """One line of escaped `name: value` facts about a result."""
    return '<p class="meta">' + " · ".join(f"{html.escape(k)}: {html.escape(_text(v))}"
                                            for k, v in fields.items()) + "</p>"


def _name(path, root):
    path = Path(path)
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _subsection(path, root, body):
    return f"<h3>{html.escape(_name(path, root))}</h3>{body}"


# ---------------------------------------------------------------------- sections

def recording_section(found, root):
    """Each recording: its summary and an overview of its first trial."""
    parts = []
    for path, _ in found["recording"]:
        s = summarize(path)
        rows = [("session", s["session"]), ("units", s["units"]), ("spikes", s["spikes"]),
                ("mean rate (Hz per unit)", s["mean_rate_hz"]), ("duration (s)", s["duration_s"]),
                ("behaviour", ", ".join(s["behavior"]) or "none"), ("movies", len(s["movies"])),
                ("stimulus presentations", s["presentations"]), ("trials", s["trials"]),
                *((f"{name} split", f"{d['intervals']} intervals, {d['seconds']:.6g} s")
                  for name, d in s["splits"].items())]
        definitions = ["mean rate: spikes / (duration of the recording's domain · units).",
                       "splits: by trial when there are trials (trials of held-out movies in test only), "
                       "otherwise contiguous time blocks."]
        body = table(("field", "value"), rows, definitions)
        body += image(rendered(recording_overview, path), f"{_name(path, root)}: movie frames, spikes and "
                                                          "behaviour at the start of the first trial")
        parts.append(_subsection(path, root, body))
    return parts


def training_section(found, root):
    """Each training log: its curves and final numbers; the demo's validation against the baseline."""
    parts = []
    for path, rows in found["training"]:
        train = [r for r in rows if r.get("split") == "train"]
        valid = [r for r in rows if r.get("split") == "valid" and r.get("nll_per_spike") is not None]
        best = min(valid, key=lambda r: r["nll_per_spike"]) if valid else {}
        cells = [("training steps", max((r["step"] for r in rows), default=None)),
                 ("last training loss", train[-1].get("loss") if train else None),
                 ("best validation NLL/spike (nats)", best.get("nll_per_spike")),
                 ("at step", best.get("step")), ("unit accuracy there", best.get("unit_accuracy"))]
        definitions = ["training loss: the config-weighted sum of the objectives on one training batch, "
                       "per target (gap/END and unit cross-entropy, plus contrastive and behaviour terms).",
                       NLL_PER_SPIKE + " Computed on the validation windows.",
                       "unit accuracy: fraction of spikes whose unit is the model's most probable one."]
        body = table(("field", "value"), cells, definitions)
        body += image(rendered(training_curves, path), f"{_name(path, root)}: training loss and validation NLL")
        parts.append(_subsection(path, root, body))
    for path, demo in found["demo"]:
        rows = [(name, m.get("nll_per_spike"), m.get("unit_accuracy")) for name, m in demo["valid"].items()]
        definitions = [NLL_PER_SPIKE + " On the whole validation split.",
                       "empirical frequencies: gap/END and unit fixed to their training-window frequencies, "
                       "the floor every model must beat.",
                       "unit accuracy: fraction of spikes whose unit is the model's most probable one."]
        parts.append(_subsection(path, root, table(("model", "NLL/spike", "unit accuracy"), rows, definitions)))
    return parts


def score_section(found, root):
    """Each `neuroformer score` report: held-out likelihood per row, model and GLM."""
    parts = []
    for path, report in found["score"]:
        rows = [(name, model, row.get("trials"), row.get("n_spikes"), row[model].get("nll_per_spike"),
                 row[model].get("bits_per_spike"))
                for name, row in report["rows"].items() for model in ("neuroformer", "glm") if model in row]
        definitions = [BITS_PER_SPIKE, NLL_PER_SPIKE,
                       "spikes: the recorded spikes of the split's trials, each scored once with the "
                       "recorded history before it; rows: trials of stimuli seen in training, of held-out "
                       "stimuli, and all.", "figure: each neuron's bits/spike, model against GLM."]
        body = meta(split=report.get("split"), run=report.get("run"), recording=report.get("recording"))
        body += table(("row", "model", "trials", "spikes", "NLL/spike", "bits/spike"), rows, definitions)
        parts.append(_subsection(path, root, body + images(figure_files("score", path, report), root)))
    return parts


SIMULATION_COLUMNS = {"psth_r_median": "PSTH r", "rate_ratio": "rate ratio", "isi_ks_median": "ISI KS",
                      "pairwise_similarity": "pairwise similarity", "window_f1": "window F1",
                      "bits_per_spike": "bits/spike"}


def simulation_section(found, root):
    """Each `neuroformer evaluate` report: simulated against recorded held-out trials, rasters and PSTHs."""
    parts = []
    for path, report in found["simulation"]:
        rows = []
        for group, summary in report["summary"].items():
            rows += [(group, model, *(summary[model].get(k) for k in SIMULATION_COLUMNS))
                     for model in ("neuroformer", "glm") if model in summary]
            rows.append((group, "noise ceiling", summary.get("noise_ceiling"), *[None] * 5))
        bin_s = report.get("psth_bin")
        definitions = [
            f"PSTH r: median over neurons of the Pearson correlation of recorded and simulated PSTHs "
            f"({_text(bin_s)} s bins, trials of each movie averaged).",
            "rate ratio: mean simulated rate / mean recorded rate.",
            "ISI KS: median over units (at least 20 intervals in both) of the Kolmogorov–Smirnov distance "
            "between recorded and simulated inter-spike-interval distributions; lower is better.",
            "pairwise similarity: Pearson correlation of the recorded and the simulated pairwise correlations "
            "of binned counts over all unit pairs.",
            "window F1: F1 score of which (unit, bin) pairs hold a spike, simulated against the recorded trial.",
            BITS_PER_SPIKE + " Here on the recorded spikes of the full windows tiling these trials.",
            "noise ceiling: median over neurons of √(Spearman–Brown-corrected split-half correlation of "
            "recorded PSTHs), the PSTH r that trial-to-trial variability allows."]
        body = meta(repeats=report.get("repeats"), simulated=report.get("simulated"), run=report.get("run"))
        body += table(("row", "model", *SIMULATION_COLUMNS.values()), rows, definitions)
        parts.append(_subsection(path, root, body + images(figure_files("simulation", path, report), root)))
    return parts


def connectivity_section(found, root):
    """Each connectivity .npz: its matrices and their figures; the demo's scores against the true coupling."""
    parts = []
    for path, matrices in found["connectivity"]:
        names = [k for k in matrices if k not in ("unit_ids", "split", "combine", "provenance")]
        rows = [(name, " × ".join(str(n) for n in matrices[name].shape)) for name in names]
        definitions = ["each neuron × neuron matrix is (target unit, source unit): row i, column j says how much "
                       "j drives i. Attention matrices are relative to chance (1: as much as a uniform query); "
                       "perturbation is the mean change of log p(unit i | gap) 1–20 ms after one inserted spike "
                       "of unit j; pearson and lagged_correlation are correlation baselines, glm_coupling the GLM's.",
                       "stimulus_attention is neuron × patch rows × patch columns."]
        body = meta(split=str(matrices["split"]), combine=str(matrices["combine"]), units=len(matrices["unit_ids"]))
        body += table(("measure", "shape"), rows, definitions)
        files = figure_files("connectivity", path, matrices)
        square = {k: matrices[k] for k in names if matrices[k].shape == (len(matrices["unit_ids"]),) * 2}
        if files:
            body += images(files, root)
        elif square:
            body += image(rendered(connectivity_figure, square, None), f"{_name(path, root)}: matrices")
        parts.append(_subsection(path, root, body))
    for path, demo in found["demo"]:
        if demo.get("connectivity"):
            rows = [(name, s.get("r2"), s.get("spearman"), s.get("auroc")) for name, s in demo["connectivity"].items()]
            definitions = ["R²: squared Pearson correlation, over off-diagonal pairs, of the measure with the true "
                           "coupling W (signed measures) or |W| (non-negative ones).",
                           "Spearman: rank correlation with the same pairing.",
                           "AUROC: how well the measure (its magnitude if signed) tells truly connected pairs "
                           "from unconnected ones; 0.5 is chance."]
            parts.append(_subsection(path, root, "<p>Scored against the recording's true coupling:</p>" +
                                     table(("measure", "R²", "Spearman", "AUROC"), rows, definitions)))
    return parts


DECODING_COLUMNS = {"test_r": "test r", "test_r2": "test R²", "valid_r": "valid r",
                    "test_r_seen_stimuli": "test r, seen stimuli", "test_r_novel_stimuli": "test r, novel stimuli",
                    "test_accuracy": "accuracy", "test_balanced_accuracy": "balanced accuracy",
                    "valid_balanced_accuracy": "valid balanced accuracy", "majority_class_rate": "majority rate",
                    "test_balanced_accuracy_seen_stimuli": "balanced accuracy, seen stimuli",
                    "test_balanced_accuracy_novel_stimuli": "balanced accuracy, novel stimuli"}
DECODING_DEFINITIONS = [
    "r: Pearson correlation of the decoded and the recorded trace over the held-out samples; R²: 1 − SSE/SST "
    "about the test mean (negative: worse than the mean).",
    "valid: the validation score that chose each model's settings and smoothing; the test split plays no part.",
    "seen / novel stimuli: test samples in trials of movies shown in training, and of held-out movies.",
    "accuracy: fraction of labels right; balanced accuracy: mean recall over the classes present; majority "
    "rate: the accuracy of always guessing the most common class."]


def decoding_section(found, root):
    """Each `neuroformer decode` report: held-out scores per target and model, and the decoded traces."""
    parts = []
    for path, report in found["decoding"]:
        body = meta(mode=report.get("mode"), **{f"{s} samples": n for s, n in (report.get("samples") or {}).items()},
                    **{"label fraction": report.get("label_fraction")})
        for title, results in (("", report["results"]), ("Baselines", report.get("baselines") or {})):
            if results:
                body += (f"<h4>{title}</h4>" if title else "") + decoding_table(results)
        parts.append(_subsection(path, root, body + images(figure_files("decoding", path, report), root)))
    return parts


def decoding_table(results):
    """One row per (target, model) with the metrics any of them reports."""
    present = [k for k in DECODING_COLUMNS if any(k in m for models in results.values() for m in models.values())]
    rows = [(target, model, *(m.get(k) for k in present))
            for target, models in results.items() for model, m in models.items()]
    return table(("target", "model", *(DECODING_COLUMNS[k] for k in present)), rows, DECODING_DEFINITIONS)


SECTIONS = (("recording", "Recording", recording_section), ("training", "Training", training_section),
            ("score", "Held-out scores against the GLM", score_section),
            ("simulation", "Simulated against recorded trials", simulation_section),
            ("connectivity", "Connectivity", connectivity_section), ("decoding", "Decoding", decoding_section))


# ---------------------------------------------------------------------- the page

STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h2 { border-bottom: 2px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-family: monospace; font-size: 1em; color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
th { background: #f0f0f0; }
.definitions { font-size: 0.85em; color: #444; }
.meta { font-size: 0.85em; color: #666; }
figure { margin: 1em 0; }
img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #666; }
"""


def page(root, sections):
    """The whole HTML document: title, contents and the sections [(anchor, title, html)]."""
    contents = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{html.escape(t)}</h2>{h}</section>' for a, t, h in sections)
    title = html.escape(f"Neuroformer report: {root.name or root}")
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
            f'<p class="meta">{html.escape(str(root))} · made {made} by neuroformer report</p>'
            f"<ul>{contents}</ul>{body}</body></html>\n")


def write_report(result_dir, out_path=None):
    """Write the HTML page of the results under `result_dir` to `out_path` (default
    RESULT_DIR/report.html) atomically; returns its path."""
    root = Path(result_dir).resolve()
    if not root.is_dir():
        raise InputError(result_dir, ("DIR", "is not a directory" if root.exists() else "does not exist"))
    out = Path(out_path).resolve() if out_path else root / "report.html"
    found = find_results(root)
    inputs = {p for kind, items in found.items() for path, content in items
              for p in (path, *figure_files(kind, path, content))}
    if not inputs:
        raise InputError(result_dir, ("DIR", "holds no result (recording, metrics.jsonl, score, evaluate or "
                                             "decode JSON, connectivity .npz)"))
    if out in inputs:
        raise InputError(out, ("-o", "is one of the report's input files"))
    check_writable(out)
    sections = [(anchor, title, "".join(parts)) for anchor, title, build in SECTIONS
                if (parts := build(found, root))]
    with atomic_path(out) as tmp:
        tmp.write_text(page(root, sections), encoding="utf-8")
    return out


def check_writable(out):
    """An InputError unless a file can be put at `out` (its folder is made if missing)."""
    if out.is_dir():
        raise InputError(out, ("-o", "is a directory"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent):
            pass
    except OSError as err:
        raise InputError(out, ("-o", f"cannot be written ({err.strerror or err})")) from None
