"""The researcher's walkthrough (docs/walkthrough.md) in a real browser: the gallery built from the shipped
official-format example (examples/official-small) with the page's command, served by a real ``streamlit run app.py``
with the page's environment; Explore draws a panel per word, Evaluate gives the CLI's rsum.

Uses test_browser.py's browser and helpers (skipped, with the reason, where Chromium or Playwright is missing).
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from test_browser import (browser, page, shots, streamlit_app, sync_api, wait_for_panels,  # noqa: F401 - fixtures
                          wait_until_idle)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from test_walkthrough import EXAMPLE, doc_commands, run_cli, serve_env  # noqa: E402


@pytest.fixture(scope="module")
def walkthrough_server(tmp_path_factory):
    """The page's build and eval commands run, then its ``streamlit run`` line served on a free port."""
    cwd = tmp_path_factory.mktemp("walkthrough")
    (cwd / "examples").symlink_to(REPO / "examples")
    build, evaluate, serve, _ = doc_commands()
    assert run_cli(build, cwd).returncode == 0
    evaluated = run_cli(evaluate, cwd)
    assert evaluated.returncode == 0, evaluated.stderr
    rsum = re.search(r"^rsum: ([\d.]+)", evaluated.stdout, re.M).group(1)
    log = cwd / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCAN_VIZ_")}
    env.update(serve_env(serve, cwd), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with streamlit_app(env, log) as url:
        yield {"url": url, "rsum": rsum}


def test_walkthrough_explore_then_evaluate(walkthrough_server, page, shots):  # noqa: F811 - fixtures
    import json

    image_id = json.loads((EXAMPLE / "MANIFEST.json").read_text())["image_ids"][0]
    sentence = (EXAMPLE / "captions.txt").read_text().splitlines()[0]
    page.goto(f"{walkthrough_server['url']}/?image={quote(image_id)}&q={quote(sentence)}")
    wait_for_panels(page, len(sentence.split()))
    wait_until_idle(page)
    assert page.locator('[data-testid="stAlert"]').filter(has_text="error").count() == 0
    shots(page, "walkthrough-explore")
    page.goto(f"{walkthrough_server['url']}/evaluate")
    page.get_by_role("button", name="Evaluate on the gallery").click()
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="rsum")
    sync_api.expect(metric).to_contain_text(walkthrough_server["rsum"])
    wait_until_idle(page)
    shots(page, "walkthrough-evaluate")
