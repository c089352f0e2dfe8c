"""Figures are drawn without touching the caller's matplotlib: importing `neuroformer.plots` and
drawing with it keep the backend and the pyplot figures a user has."""
import json
import subprocess
import sys

USER_SESSION = """
import sys
import matplotlib
import matplotlib.pyplot as plt
matplotlib.use("svg")
plt.figure()                                   # the user's own open figure
import neuroformer.plots
after_import = matplotlib.get_backend()
neuroformer.plots.training_curves(sys.argv[1], sys.argv[2])
print(after_import, matplotlib.get_backend(), plt.get_fignums())
"""


def test_plots_keep_the_callers_backend_and_figures(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in [
        {"step": 1, "split": "train", "loss": 2.0}, {"step": 2, "split": "train", "loss": 1.5},
        {"step": 2, "split": "valid", "nll_per_spike": 1.7}]))
    png = tmp_path / "curves.png"
    out = subprocess.run([sys.executable, "-c", USER_SESSION, str(metrics), str(png)],
                         capture_output=True, text=True, check=True).stdout.strip().split(maxsplit=2)
    assert out == ["svg", "svg", "[1]"]
    assert png.read_bytes().startswith(b"\x89PNG")            # rendered by Agg all the same
