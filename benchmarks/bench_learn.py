"""The Learn page's latency after a parameter change, and the handout's size and build time.

1. Server time after lambda_softmax moves until the Learn panel has the new numbers: what the panel's fragment
   computes (the head's steps on the pair for the new value, uncached, float64, plus every figure of the shown
   step: heatmap with hover formulas, the image with boxes). Target: p50 < 0.3 s.
   Baseline, same run: ``model.align`` of the same pair (what Explore computes for a settings change, float32).
2. The same change through AppTest (the whole page script, as AppTest cannot rerun a fragment alone): an upper
   bound of the server's work.
3. The handout of the pair: bytes and build seconds.

Runs on the bundled scan-emoji-t2i model and gallery. One run; it prints p50 / p95.

    python benchmarks/bench_learn.py [--runs 20] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def p50_p95(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-apptest", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from scan_viz import learn
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import DEFAULT_GALLERY, gallery_regions
    from scan_viz.walk import steps

    model, gallery = load_model("scan-emoji-t2i"), load_gallery(DEFAULT_GALLERY)
    image_id = gallery.ids[0]
    sentence = gallery.captions_of(image_id)[0]
    regions = gallery_regions(gallery, image_id)
    image = gallery.load_image(image_id)
    lambdas = np.linspace(0.5, 50.0, args.runs + 2)

    def panel(lam: float) -> None:
        walk = steps(model, regions, sentence, head="scan_t2i", lambda_softmax=float(lam))
        step = walk.step("attention")
        learn.step_figure(walk, step)
        learn.boxes_figure(image, walk, learn.row_weights(walk, step, 1))

    def baseline(lam: float) -> None:
        model.align(regions.features, sentence, head=model.head("scan_t2i", lambda_softmax=float(lam)))

    results = {}
    for name, fn in (("learn panel (steps + figures)", panel), ("baseline: model.align", baseline)):
        fn(lambdas[0])
        fn(lambdas[1])
        times = []
        for lam in lambdas[2:]:
            start = time.perf_counter()
            fn(lam)
            times.append(time.perf_counter() - start)
        results[name] = p50_p95(times)

    start = time.perf_counter()
    walk = steps(model, regions, sentence, head="scan_t2i")
    html = learn.handout_html(walk, image, sentence)
    handout_s = time.perf_counter() - start

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{args.threads}; pair {image_id} / {sentence!r}; {args.runs} runs")
    for name, (p50, p95) in results.items():
        print(f"{name:34s} p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms")
    base = results["baseline: model.align"][0]
    print(f"ratio learn / baseline (p50): {results['learn panel (steps + figures)'][0] / base:.2f}")
    print(f"handout: {len(html.encode()) / 1e6:.2f} MB, built in {handout_s:.2f} s")

    if not args.skip_apptest:
        from streamlit.testing.v1 import AppTest

        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
        at.query_params.update(image=image_id, q=sentence, head="scan_t2i", step="3")
        at.session_state["ln_predict"] = False
        at.switch_page("scan_viz/app/learn.py")
        at.run()
        times = []
        for lam in lambdas[2:]:
            start = time.perf_counter()
            at.slider(key="ln_lambda_softmax").set_value(float(round(lam * 2) / 2)).run()
            times.append(time.perf_counter() - start)
            assert at.session_state["ln_shown"]["settings"]["lambda_softmax"] == round(lam * 2) / 2
        p50, p95 = p50_p95(times)
        print(f"{'AppTest: slider -> new numbers':34s} p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms "
              "(whole page script)")


if __name__ == "__main__":
    main()
