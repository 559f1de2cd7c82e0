"""The Learn page's latency after a parameter change, and the handout's size and build time.

1. Server time after lambda_softmax moves until the Learn panel has the new numbers: what the panel's fragment
   computes (the head's steps on the pair for the new value, uncached, float64, plus every figure of the shown
   step: heatmap with hover formulas, the image with boxes). Target: p50 < 0.3 s.
   Baseline, same run: ``model.align`` of the same pair (what Explore computes for a settings change, float32).
2. The same change through AppTest (the whole page script, as AppTest cannot rerun a fragment alone): an upper
   bound of the server's work.
3. The handout of the pair: bytes and build seconds.
4. With ``--browser``: the browser time. A real ``streamlit run app.py`` on 127.0.0.1 (a free port, the bundled
   model, default environment) and Debian's Chromium through Playwright open the Learn deep link of the same pair
   at the attention step, switch "Ask me to predict first" off, then move the lambda_softmax slider one step with
   the keyboard (ArrowRight, +0.5) ``--runs`` times. Timed from the key press until the panel shows the new
   numbers: the step's "With the code's numbers" line (the largest alpha of the chosen word, its formula with the
   new lambda) and the score in the panel's caption both equal the library's (``scan_viz.steps``) for the new
   value; and until that rerun has finished (Streamlit's status widget gone). Target: p50 < 1 s.
   Reuses the browser tests' helpers (tests/browser/test_browser.py: ``streamlit_app``, Chromium and its flags).

Runs on the bundled scan-emoji-t2i model and gallery. One run; it prints p50 / p95.

    python benchmarks/bench_learn.py [--runs 20] [--threads N] [--skip-apptest] [--browser]
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
    parser.add_argument("--browser", action="store_true",
                        help="also time the change in Chromium against a real streamlit run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from scan_viz.gallery import load_gallery
    from scan_viz.heads.walk import steps
    from scan_viz.model import load_model
    from scan_viz.pipeline import DEFAULT_GALLERY, gallery_regions
    from scan_viz.render import learn

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

    if args.browser:
        shown, idle = browser_times(model, gallery, image_id, sentence, args.runs)
        for name, times in (("browser: key -> new numbers shown", shown), ("browser: key -> rerun finished", idle)):
            p50, p95 = p50_p95(times)
            print(f"{name:34s} p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms")


#: The text of every st.text and caption on the page, whitespace collapsed.
PAGE_TEXTS = """() => [...document.querySelectorAll('[data-testid="stText"], [data-testid="stCaptionContainer"]')]
  .map(e => e.innerText.replace(/\\s+/g, ' ').trim())"""
SHOWS = """([formula, score]) => { const texts = (%s)();
  return texts.includes(formula) && texts.some(t => t.endsWith(score)); }""" % PAGE_TEXTS


def browser_times(model, gallery, image_id: str, sentence: str, runs: int) -> tuple[list[float], list[float]]:
    """Seconds from an ArrowRight on the lambda_softmax slider until the panel shows the library's numbers for the
    new value, and until that rerun has finished; ``runs`` changes after two untimed ones."""
    import html
    import re
    import tempfile
    from urllib.parse import urlencode

    sys.path.insert(0, str(REPO / "tests" / "browser"))
    from test_browser import CHROMIUM, CHROMIUM_ARGS, STEP_MS, VIEWPORT, streamlit_app, sync_api, wait_until_idle
    from test_browser_learn import open_learn

    from scan_viz.app.safe_text import plain
    from scan_viz.heads.walk import steps
    from scan_viz.pipeline import gallery_regions
    from scan_viz.render import learn

    regions = gallery_regions(gallery, image_id)
    word = 1  # the page's default word on a sentence of more than two tokens

    def expected(lam: float) -> tuple[str, str]:
        walk = steps(model, regions, sentence, head="scan_t2i", lambda_softmax=lam)
        step = walk.step("attention")
        peak = int(np.argmax(step.value[word]))
        line = "With the code's numbers: " + plain(html.unescape(
            learn.cell_formula(walk, step, word, peak).replace("<br>", " ")))
        return re.sub(r"\s+", " ", line).strip(), f"score {walk.score:.4f}"

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCAN_VIZ_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    shown, idle = [], []
    with tempfile.TemporaryDirectory() as folder, streamlit_app(env, Path(folder) / "server.log") as url, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=STEP_MS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(STEP_MS)
            open_learn({"url": url}, page, image=image_id, q=sentence, head="scan_t2i", step=3)
            if page.locator(".st-key-ln_predict input").first.is_checked():
                page.get_by_text("Ask me to predict first").first.click()
                # during the rerun the old switch can still be on the page beside the new one: wait for both
                page.wait_for_function("() => [...document.querySelectorAll('.st-key-ln_predict input')]"
                                       ".every(e => !e.checked)")
                wait_until_idle(page)
            page.wait_for_function(SHOWS, arg=list(expected(9.0)))
            wait_until_idle(page)
            slider = page.locator(".st-key-ln_lambda_softmax input[type='range']")
            lam = float(slider.input_value())
            for i in range(runs + 2):
                lam += 0.5
                want = list(expected(lam))
                slider.focus()
                start = time.perf_counter()
                page.keyboard.press("ArrowRight")
                page.wait_for_function(SHOWS, arg=want, polling="raf")
                seen = time.perf_counter() - start
                wait_until_idle(page)
                done = time.perf_counter() - start
                assert float(slider.input_value()) == lam
                if i >= 2:
                    shown.append(seen)
                    idle.append(done)
        finally:
            browser.close()
    return shown, idle


if __name__ == "__main__":
    main()
