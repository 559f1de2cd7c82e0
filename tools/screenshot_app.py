"""Screenshot the app on the bundled model and gallery, for the README.

    python tools/screenshot_app.py --out docs/app-explore.png [--link "?image=test_000002&q=..."]
    python tools/screenshot_app.py --out docs/app-compare.png --element .st-key-compare \
        --link "?image=test_000002&q=two+small+blue+birds+flying+above+the+sea&compare=scan_t2i,chan,caan"

Starts ``streamlit run app.py`` on a free loopback port (the environment's SCAN_VIZ_* variables apply), opens the
link in Debian's headless Chromium (Playwright, ``/usr/bin/chromium``), waits for the word panels and saves a
PNG. Stops the server when done.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "app-explore.png"))
    ap.add_argument("--link", default="?image=test_000002&q=two+small+blue+birds+flying+above+the+sea")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--element", help="CSS selector: wait for it and save only that part of the page")
    ap.add_argument("--wait-text", default="word panels",
                    help="text that shows the page has drawn its results (Retrieve: 'score')")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless",
                               "true", "--server.port", str(port), "--server.address", "127.0.0.1",
                               "--browser.gatherUsageStats", "false"], cwd=REPO, env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"{url}/{args.link}", timeout=120_000)
            page.get_by_text(args.wait_text).first.wait_for(timeout=180_000)
            target = page.locator(args.element).first if args.element else None
            if target is not None:
                target.wait_for(timeout=180_000)
                target.scroll_into_view_if_needed()
            time.sleep(2)  # let the images paint
            if target is not None:
                target.screenshot(path=args.out)
            else:
                page.screenshot(path=args.out)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
