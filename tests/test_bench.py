"""The window-reading benchmark's quick mode runs end to end and reports sane figures."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_windows.py"


def test_bench_windows_quick(tmp_path):
    out = tmp_path / "windows.json"
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path), "--out", str(out)],
                   check=True, capture_output=True, text=True)
    report = json.loads(out.read_text())
    short, long = report["rows"]
    assert short["windows"] == long["windows"] == 100
    assert 1.7 < long["recording_s"] / short["recording_s"] < 2.3 and long["spikes"] > 1.5 * short["spikes"]
    assert short["windows_per_s"] > 10 and short["frames_per_window"] == 20
    assert out.with_suffix(".png").exists()
