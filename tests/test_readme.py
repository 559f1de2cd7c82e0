"""The README as a newcomer uses it: its Python example and every `scan-viz` command in it run as written."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_python_example_runs(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(REPO)
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
        if "al" in namespace:
            al = namespace["al"]
            assert len(al.word_relevance) == len(al.words) and np.isfinite(al.score)
            assert namespace["sims"].shape == (4, 2)
            assert abs(namespace["walk"].score - float(namespace["sims"][0, 0])) < 1e-4


def test_readme_commands_run(tmp_path):
    """Each indented ``scan-viz ...`` line, in order, in a fresh folder that sees the repository's examples."""
    commands = [line.strip() for line in README.splitlines() if line.startswith("    scan-viz ")]
    assert len(commands) >= 5
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    for command in commands:
        argv = shlex.split(command.split("  #", 1)[0])
        proc = subprocess.run([sys.executable, "-m", "scan_viz.cli", *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    assert (tmp_path / "explained" / "heatmaps.png").is_file() and (tmp_path / "my-gallery" / "gallery.json").is_file()
