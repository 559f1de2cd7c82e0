"""How much one action grows a fresh Python process's peak memory: the measure behind every "bomb" test.

The action runs in a subprocess (``python3 -c``) from the repository root, so the library under test is this
checkout's and the pytest process's own memory does not count. Peak RSS (``ru_maxrss``) is read after the imports
and again after the action, so only what the action allocated shows.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: What a refused file may cost: the issue's bombs reached gigabytes.
MAX_GROWTH_MB = 300

_TEMPLATE = """
import json, resource, sys
from scan_viz.errors import ScanVizError
{setup}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = {{"error": None, "value": None}}
try:
    result["value"] = repr({action})[:300]
except ScanVizError as exc:
    result["error"] = str(exc)
result["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
sys.stdout.flush()
print("\\nRSS-RESULT " + json.dumps(result))
"""


@dataclasses.dataclass
class Measured:
    """``error``: the ScanVizError's message (None when the action returned ``value``); ``growth_mb``: peak RSS
    growth; ``returncode``, ``stderr``: of the subprocess (anything but a ScanVizError escapes to stderr)."""

    error: str | None
    value: str | None
    growth_mb: float
    returncode: int
    stderr: str


def peak_rss_growth(setup: str, action: str, timeout: float = 120) -> Measured:
    """Run ``setup`` (statements: imports, paths), then evaluate the expression ``action`` in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _TEMPLATE.format(setup=setup, action=action)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RSS-RESULT ")]
    assert lines, f"the action did not finish (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(lines[-1][len("RSS-RESULT "):])
    return Measured(result["error"], result["value"], result["growth_mb"], proc.returncode, proc.stderr)
