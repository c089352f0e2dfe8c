"""`neuroformer report`: one self-contained HTML page of a folder's results, read as text and
rendered by headless Chromium."""
import json
import re
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from neuroformer.cli import main

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1200,2000", "--enable-logging=stderr", "--v=0"]


def write_score(path, unit_ids):
    """A score report in the shape `neuroformer score` writes, and its figure beside it."""
    model = {"nll_per_spike": 6.9, "bits_per_spike": -0.512, "per_neuron_bits_per_spike": [-0.5] * len(unit_ids)}
    glm = {"nll_per_spike": 6.5, "bits_per_spike": 0.125, "per_neuron_bits_per_spike": [0.1] * len(unit_ids)}
    report = {"recording": "syn.h5", "run": "run/best.pt", "split": "test", "dt_res": 0.001,
              "null": "homogeneous Poisson, each unit's training-split rate", "unit_ids": unit_ids,
              "rows": {"all": {"n_spikes": 321, "trials": 2, "neuroformer": model, "glm": glm}},
              "glm": None, "figure": str(path.with_suffix(".png"))}
    path.write_text(json.dumps(report))
    matplotlib.image.imsave(path.with_suffix(".png"), np.random.default_rng(0).random((8, 8)))


def write_decode(path):
    """A decode report as `neuroformer decode` writes it (a target name needing escapes), figure beside."""
    path.parent.mkdir(parents=True)
    report = {"recording": "syn.h5", "targets": ["running.<speed>"], "mode": "baselines", "run": None,
              "label_fraction": 1.0, "samples": {"train": 10, "valid": 5, "test": 7},
              "results": {"running.<speed>": {"ridge": {"test_r": 0.456, "test_r2": 0.2, "valid_r": 0.4}}}}
    path.write_text(json.dumps(report))
    matplotlib.image.imsave(path.with_suffix(".png"), np.random.default_rng(1).random((8, 8)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A folder with a tiny recording, a 2-step run, and score, decode and connectivity results."""
    root = tmp_path_factory.mktemp("results")
    rec = str(root / "syn.h5")
    assert main(["prepare", "--synthetic", "--neurons", "20", "--trials", "3", "--trial-length", "2", "-o", rec]) == 0
    assert main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--data", rec,
                 "-o", str(root / "run"), "--max-steps", "2"]) == 0
    unit_ids = [f"synthetic/n{i:04d}" for i in range(20)]
    write_score(root / "score.json", unit_ids)
    write_decode(root / "decoding" / "speed.json")
    matrices = np.random.default_rng(2).normal(size=(2, 20, 20))
    np.savez(root / "conn.npz", unit_ids=unit_ids, combine="mean", split="test", pearson=matrices[0],
             perturbation=matrices[1])
    return root


@pytest.fixture(scope="module")
def page(results):
    assert main(["report", str(results), "-o", str(results / "report.html")]) == 0
    return results / "report.html"


def test_page_has_the_sections_of_the_results_and_nothing_external(page):
    text = page.read_text()
    for section in ("recording", "training", "score", "connectivity", "decoding"):
        assert f'<section id="{section}">' in text
    assert '<section id="simulation">' not in text
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "running.&lt;speed&gt;" in text and "<speed>" not in text
    assert "-0.512" in text and "0.125" in text and "0.456" in text
    assert "bits/spike: (log-likelihood of the model − that of a homogeneous Poisson process" in text


def test_bad_input_is_one_line_and_exit_2(results, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = [[str(tmp_path / "missing")], [str(tmp_path / "empty")],
             [str(results), "-o", str(results / "score.json")], [str(results), "-o", str(results / "score.png")],
             [str(results), "-o", str(results / "syn.h5" / "report.html")], [str(results), "-o", str(tmp_path)]]
    for args in cases:
        capsys.readouterr()
        assert main(["report", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def chromium(page, workdir):
    """Chromium's screenshot of `page` (as an array) and its stderr log."""
    shot = workdir / f"{page.stem}.png"
    done = subprocess.run([str(CHROMIUM), *HEADLESS, f"--user-data-dir={workdir / 'profile'}",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    return matplotlib.image.imread(shot), done.stderr


def console_lines(log):
    return [line for line in log.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_page_renders_in_headless_chromium_without_console_messages(page, tmp_path):
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><html><body><script>console.error("control")</script></body></html>')
    assert console_lines(chromium(control, tmp_path)[1]), "Chromium's log no longer shows console messages"
    shot, log = chromium(page, tmp_path)
    assert not console_lines(log)
    pixels = shot[..., :3]
    assert pixels.std() > 0.05 and (pixels < 0.9).mean() > 0.02
