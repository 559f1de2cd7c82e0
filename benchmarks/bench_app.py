"""The app's two latency targets, measured after warm-up, each against a named baseline from the same run.

1. An uploaded 640x480 PNG + a sentence -> every word panel ready to send (decode, detector, alignment, one panel
   per word encoded as Streamlit encodes an image). Target: p50 <= 1.0 s.
   Baseline: the same steps drawing the panels as the matplotlib grid of ``scan-viz explain`` (``word_panels`` ->
   PNG), which is what the app's PNG download does on click.
2. A text query -> the gallery's top 10. Target: p50 <= 0.3 s.
   Baseline: ``model.similarity`` over the gallery's raw region features (every image re-encoded per query).

Runs on the bundled model, detector and gallery when they exist, else on the tests' fixture bundle (tiny and
untrained: its numbers say little about the bundled model's).

    python benchmarks/bench_app.py [--runs 20] [--fixture] [--threads N]
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SENTENCE = "a small red car on the road next to two yellow birds"


def percentiles(fn: Callable[[int], object], runs: int, warmup: int = 2) -> tuple[float, float]:
    """(p50, p90) seconds of ``fn(i)`` over ``runs`` calls after ``warmup`` calls."""
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def sources(use_fixture: bool):
    """(Sources, description) of the bundle to measure."""
    from scan_viz.app.bundle import Sources
    from scan_viz.model.checkpoint import CONFIG_FILE
    from scan_viz.model import PRETRAINED_DIR
    from scan_viz.pipeline import DEFAULT_GALLERY, DEFAULT_MODEL

    bundled = [PRETRAINED_DIR / DEFAULT_MODEL / CONFIG_FILE, DEFAULT_GALLERY / "gallery.json"]
    if not use_fixture and all(p.is_file() for p in bundled):
        return Sources(), f"bundled {DEFAULT_MODEL} on {DEFAULT_GALLERY.name}"
    sys.path.insert(0, str(REPO / "tests"))
    from app_fixture import app_fixture

    fixture = app_fixture()
    return Sources(model=str(fixture.model), gallery=str(fixture.gallery), detector=str(fixture.detector)), \
        "test fixture (12 images, untrained detector, 32-d random SCAN)"


def upload_bytes(seed: int = 7) -> bytes:
    """A generated 640x480 scene as PNG bytes, standing in for a user's upload."""
    from scan_viz.scenes import generate_scene

    buffer = io.BytesIO()
    Image.fromarray(generate_scene(seed, (640, 480)).image).save(buffer, format="PNG")
    return buffer.getvalue()


def streamlit_encode(image: np.ndarray) -> bytes:
    """What st.image does with an RGB array: JPEG at quality 100 (streamlit.elements.lib.image_utils)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=100)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--fixture", action="store_true", help="measure the test fixture even if bundled models exist")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from scan_viz.app.bundle import load_bundle, load_detector_for
    from scan_viz.app.params import HeadSettings
    from scan_viz.app.uploads import read_upload
    from scan_viz.app.views import word_panels
    from scan_viz.pipeline import detect, explain
    from scan_viz.render import figure_to_png
    from scan_viz.render import word_panels as panel_figure

    chosen, described = sources(args.fixture)
    bundle = load_bundle(chosen)
    detector = load_detector_for(bundle.model, chosen)
    head = HeadSettings.from_config(bundle.model.config).build(bundle.model)
    data = upload_bytes()
    n_words = len(SENTENCE.split())

    def upload_to_panels(_: int) -> list[bytes]:
        image = read_upload(data, "upload.png")
        alignment = explain(bundle.model, detect(detector, image), SENTENCE, head)
        return [streamlit_encode(p.image) for p in word_panels(image, alignment)]

    def upload_to_matplotlib(_: int) -> bytes:
        image = read_upload(data, "upload.png")
        alignment = explain(bundle.model, detect(detector, image), SENTENCE, head)
        return figure_to_png(panel_figure(image, alignment))

    queries = bundle.gallery.captions or [SENTENCE]

    def top10(i: int) -> list:
        return bundle.index.search_images(queries[i % len(queries)], 10, head)

    features = bundle.gallery.regions.features

    def top10_brute(i: int) -> np.ndarray:
        sims = bundle.model.similarity(features, [queries[i % len(queries)]], head=head)[:, 0]
        return np.argsort(-sims, kind="stable")[:10]

    assert len(upload_to_panels(0)) == n_words
    panels = percentiles(upload_to_panels, args.runs)
    baseline = percentiles(upload_to_matplotlib, max(3, args.runs // 4), warmup=1)
    search = percentiles(top10, max(args.runs, 50))
    brute = percentiles(top10_brute, max(5, args.runs // 2), warmup=1)

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} x{torch.get_num_threads()} threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"bundle: {described}; gallery {len(bundle.gallery)} images, {len(bundle.gallery.captions)} captions, "
          f"{bundle.gallery.regions.n_regions} regions")
    print(f"upload: 640x480 PNG, sentence of {n_words} words; {args.runs} runs after 2 warm-up runs")
    print("| what | p50 | p90 | target | vs baseline |")
    print("|---|---|---|---|---|")
    print(f"| upload -> all word panels (app) | {panels[0]:.3f} s | {panels[1]:.3f} s | <= 1.0 s | "
          f"{baseline[0] / panels[0]:.1f}x faster |")
    print(f"| baseline: upload -> matplotlib panel grid PNG (download/CLI) | {baseline[0]:.3f} s | {baseline[1]:.3f} s "
          "| | 1.0x |")
    print(f"| text -> top-10 images (gallery index) | {search[0] * 1000:.1f} ms | {search[1] * 1000:.1f} ms | "
          f"<= 300 ms | {brute[0] / search[0]:.1f}x faster |")
    print(f"| baseline: text -> top-10 via similarity() on raw features | {brute[0] * 1000:.1f} ms | "
          f"{brute[1] * 1000:.1f} ms | | 1.0x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
