"""The package's layer contracts (``.importlinter``): checked by import-linter on every test run.

The flow's layers, no circles, the library never importing the app / command line / training code, and the pages
never importing torch or a head's internals. A copy of the package with one forbidden import must fail them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(["lint-imports", "--config", str(root / ".importlinter"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layer_contracts():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_library_module_importing_the_app_breaks_them(tmp_path):
    shutil.copytree(ROOT / "scan_viz", tmp_path / "scan_viz", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    engine = tmp_path / "scan_viz" / "heads" / "engine.py"
    engine.write_text(engine.read_text() + "\nfrom scan_viz.app import params  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "scan_viz.heads.engine -> scan_viz.app.params" in done.stdout
