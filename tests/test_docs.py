"""The worked examples of the guides in docs/ run, and the links of README and docs/ resolve.

Rules for a guide (docs/*.md):
- every ```bash block is run, in the order of the file, by bash from a scratch directory that
  stands for the repository's root (`configs/` and `tests/data/` are linked into it, outputs go
  to `runs/docs/`; `neuroformer` there runs `main` in a process forked from one that imported the
  library once, tests/forked_cli.py, which spares each command the ~3 s of imports);
  ```console, ```python and other blocks are only shown;
- an HTML comment right above a ```bash block can say more about it:
  `<!-- test: writes FILE ... -->` names files the block must leave behind (besides every
  `-o`/`--output`/`--nwb` path of its commands, which are checked anyway);
  `<!-- test: requires VERB -->` runs the block only when `neuroformer VERB --help` succeeds.
All guides share one scratch directory, and a command already run by an earlier block (the
same text: the guides repeat the prepare and train lines so each one stands alone) is not run
again, so the tiny synthetic recording and two-step run are made once.
"""
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
GUIDES = ["import.md", "train.md", "simulate.md", "score.md", "connectivity.md", "decode.md", "report.md"]
MARKER = re.compile(r"<!--\s*test:\s*(\w+)\s+(.*?)\s*-->")
OUTPUT_FLAGS = ("-o", "--output", "--nwb")


def bash_blocks(text):
    """[(markers, code)] for each ```bash block; markers {key: [values]} from the comments above."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            markers, j = {}, i - 1
            while j >= 0 and MARKER.fullmatch(lines[j].strip()):
                key, values = MARKER.fullmatch(lines[j].strip()).groups()
                markers.setdefault(key, []).extend(values.split())
                j -= 1
            end = lines.index("```", i + 1)
            out.append((markers, "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return out


def commands(code):
    """Logical commands of a block: continuation lines joined, a quoted argument kept whole."""
    out, current = [], ""
    for line in code.splitlines():
        current += line + "\n"
        if line.endswith("\\") or current.count('"') % 2:
            continue
        if current.strip():
            out.append(current.strip())
        current = ""
    assert not current.strip(), f"unterminated command: {current}"
    return out


def written_files(command):
    """Paths a command says it writes through its output options."""
    words = shlex.split(command.replace("\\\n", " "))
    return [words[k + 1] for k, w in enumerate(words[:-1]) if w in OUTPUT_FLAGS]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The scratch directory, and a `neuroformer` on PATH that runs each command in a process
    forked from one that has imported the library (tests/forked_cli.py)."""
    root = tmp_path_factory.mktemp("docs")
    (root / "configs").symlink_to(REPO / "configs")
    (root / "tests").mkdir()
    (root / "tests" / "data").symlink_to(REPO / "tests" / "data")
    (root / "runs" / "docs").mkdir(parents=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               MPLBACKEND="Agg", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    forked, sock = Path(__file__).with_name("forked_cli.py"), root / "cli.sock"
    server = subprocess.Popen([sys.executable, str(forked), "serve", str(sock)], env=env, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert server.stdout.readline() == "ready\n", "the command server did not start"
        shim = bin_dir / "neuroformer"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{forked}" "{sock}" "$@"\n')
        shim.chmod(0o755)
        yield {"root": root, "env": env, "done": set()}
    finally:
        os.killpg(server.pid, signal.SIGTERM)           # the server and any command still running
        server.wait()


def _run(command, workdir):
    result = subprocess.run(["bash", "-c", "set -eo pipefail\n" + command], cwd=workdir["root"],
                            env=workdir["env"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def _verb_available(verb, workdir):
    return subprocess.run(["neuroformer", verb, "--help"], env=workdir["env"], capture_output=True,
                          timeout=120).returncode == 0


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_examples_run(guide, workdir):
    blocks = bash_blocks((DOCS / guide).read_text())
    assert blocks, f"docs/{guide} has no ```bash example"
    skipped = []
    for markers, code in blocks:
        missing = [v for v in markers.get("requires", []) if not _verb_available(v, workdir)]
        if missing:
            skipped.append(f"`neuroformer {' '.join(missing)}` is not available")
            continue
        expected = list(markers.get("writes", []))
        for command in commands(code):
            expected += written_files(command)
            if command not in workdir["done"]:
                _run(command, workdir)
                workdir["done"].add(command)
        absent = [f for f in expected if not (workdir["root"] / f).exists()]
        assert not absent, f"docs/{guide}: the example did not write {absent}"
    if skipped:
        pytest.skip(f"docs/{guide}: " + "; ".join(skipped))


def test_every_guide_is_tested():
    guides = {p.name for p in DOCS.glob("*.md") if bash_blocks(p.read_text())}
    assert guides == set(GUIDES)


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


@pytest.mark.parametrize("page", ["README.md", "BENCHMARKS.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_relative_links_resolve(page):
    path = REPO / page if (REPO / page).exists() else DOCS / page
    broken = [target for target, _ in LINK.findall(path.read_text())
              if "://" not in target and not (path.parent / target).exists()]
    assert not broken, f"{page}: links to missing files {broken}"


def test_parsing_of_blocks_and_commands():
    text = ('x\n<!-- test: writes a.txt b.txt -->\n<!-- test: requires score -->\n```bash\n'
            'neuroformer prepare --synthetic \\\n    -o runs/s.h5\npython -c "\nprint(1)\n"\n```\n'
            '```console\nnot run\n```\n')
    (markers, code), = bash_blocks(text)
    assert markers == {"requires": ["score"], "writes": ["a.txt", "b.txt"]}
    cmds = commands(code)
    assert len(cmds) == 2 and cmds[1].startswith("python -c") and cmds[1].endswith('"')
    assert written_files(cmds[0]) == ["runs/s.h5"]
