"""The researcher's walkthrough (docs/walkthrough.md) run as written on the shipped example, examples/official-small:
``scan-viz gallery build`` -> ``scan-viz eval --gallery`` (subprocesses) -> the app's Explore and Evaluate pages
(AppTest) with the environment the page's ``streamlit run`` line sets; then its ``gallery npz`` line."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from scan_viz.app import explore

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "walkthrough.md"
EXAMPLE = REPO / "examples" / "official-small"
TIMEOUT = 180


def doc_commands() -> list[str]:
    """The commands of the page's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def run_cli(command: str, cwd: Path) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    assert words[0] == "scan-viz", command
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "scan_viz.cli", *words[1:]], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The page's build and eval commands run in a fresh folder that sees the repository's examples/."""
    cwd = tmp_path_factory.mktemp("walkthrough")
    (cwd / "examples").symlink_to(REPO / "examples")
    build, evaluate, serve, npz = doc_commands()
    built = run_cli(build, cwd)
    evaluated = run_cli(evaluate, cwd)
    exported = run_cli(npz, cwd)
    assert exported.returncode == 0 and exported.stdout.startswith("wrote features-npz: "), exported.stderr
    assert len(list((cwd / "features-npz").glob("*.npz"))) == 20
    return cwd, built, evaluated, serve


def test_the_example_is_small_and_complete():
    files = {p.relative_to(EXAMPLE).as_posix(): p.stat().st_size for p in EXAMPLE.rglob("*") if p.is_file()}
    manifest = json.loads((EXAMPLE / "MANIFEST.json").read_text())
    assert {"model_best.pth.tar", "vocab.json", "features.tsv", "captions.txt"} <= set(files)
    assert {f"images/{i}.jpg" for i in manifest["image_ids"]} <= set(files) and len(manifest["image_ids"]) == 20
    assert sum(files.values()) < 5 * 2**20


def test_gallery_build_then_eval_print_the_numbers(walked):
    cwd, built, evaluated, _ = walked
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == ("wrote my-gallery: 20 images, 100 captions (official layout); boxes and images: "
                                    "Explore draws the maps")
    assert evaluated.returncode == 0, evaluated.stderr
    lines = evaluated.stdout.splitlines()
    assert lines[0].startswith("Image to text: R@1 ") and lines[1].startswith("Text to image: R@1 ")
    rsum = float(re.search(r"^rsum: ([\d.]+)  \(20 images, 100 captions\)$", evaluated.stdout, re.M).group(1))
    # the converted bundled model is trained: far above chance (random ranking gives an rsum near 150 here)
    assert rsum > 500


def serve_env(serve: str, cwd: Path) -> dict[str, str]:
    words = shlex.split(serve)
    assert words[-3:] == ["streamlit", "run", "app.py"], serve
    env = dict(w.split("=", 1) for w in words[:-3])
    assert set(env) == {"SCAN_VIZ_MODEL", "SCAN_VIZ_VOCAB", "SCAN_VIZ_GALLERY"}
    return {name: str((cwd / value).resolve()) for name, value in env.items()}


@pytest.fixture
def app(walked, monkeypatch) -> AppTest:
    cwd, built, _, serve = walked
    assert built.returncode == 0, built.stderr
    for name, value in serve_env(serve, cwd).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SCAN_VIZ_DETECTOR", raising=False)
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_explore_draws_a_panel_per_word_of_a_caption(app):
    image_id = json.loads((EXAMPLE / "MANIFEST.json").read_text())["image_ids"][0]
    rows = (EXAMPLE / "captions.txt").read_text().splitlines()
    sentence = rows[0]  # the first image's first caption (5 per image, in the order of the features)
    app.query_params["image"] = image_id
    app.query_params["q"] = sentence
    at = app.run()
    no_exception(at)
    assert at.session_state[explore.PANELS_MARKER] == sentence.split()
    assert at.session_state[explore.RANK_MARKER] >= 1 and at.session_state[explore.VERDICT_MARKER] == "own"


def test_evaluate_gives_the_cli_numbers(app, walked):
    _, _, evaluated, _ = walked
    at = app.run()
    at.switch_page("scan_viz/app/evaluate.py").run()
    no_exception(at)
    at.button[[b.label for b in at.button].index("Evaluate on the gallery")].click().run()
    no_exception(at)
    rsum = re.search(r"^rsum: ([\d.]+)", evaluated.stdout, re.M).group(1)
    assert {m.label: m.value for m in at.metric}["rsum"] == rsum
    assert any("fail at K" in c.value for c in at.caption)
