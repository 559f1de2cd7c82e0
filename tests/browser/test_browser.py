"""The app in a real browser: Playwright drives Debian's Chromium against a real ``streamlit run app.py``.

Opens a deep link and sees one panel per word, uploads a PNG through the file input, clicks a retrieval
result through to Explore, and opens links carrying Markdown/HTML payloads: they show as text, and no request
leaves the server (no remote favicon, image or script). Screenshots go to a temporary folder, and also to tests/browser/screenshots/ when
SAVE_SCREENSHOTS=1. Skipped (with the reason) where Chromium or Playwright is missing; CI installs both.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from app_fixture import INJECTION_PAYLOADS, app_fixture, png_bytes

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 3000}  # Streamlit scrolls inside its own container: show it all
SERVER_START_S = 90
# one page action, first runs included (torch imports, the bundle loads); raise it on a loaded machine
STEP_MS = int(os.environ.get("SCAN_VIZ_STEP_MS", "60000"))
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
PANEL_IMAGES = ".st-key-word_panels img"

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (CI does) to run the browser tests",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_health(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"streamlit did not answer on {url} within {timeout_s:.0f} s")


@contextlib.contextmanager
def streamlit_app(env: dict[str, str], log: Path, port: int | None = None):
    """A real ``streamlit run app.py`` on 127.0.0.1 with ``env``, its output in ``log``; yields its URL. Stopped
    (its whole process group) on exit, and its log must hold no traceback."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(url, process, SERVER_START_S)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
    assert b"Traceback" not in log.read_bytes(), log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``streamlit run app.py`` serving the fixture bundle on a free port; stopped after the module."""
    bundle = app_fixture()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {**os.environ, **bundle.env(), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    port = int(os.environ.get("SCAN_VIZ_TEST_PORT") or 0) or None
    with streamlit_app(env, log, port) as url:
        yield {"url": url, "bundle": bundle, "log": log}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=STEP_MS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(STEP_MS)
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Save a screenshot to a temporary folder, and to tests/browser/screenshots/ with SAVE_SCREENSHOTS=1."""
    folder = tmp_path_factory.mktemp("screenshots")

    def save(page, name: str) -> Path:
        """``page``: the page, or a locator to capture only that element."""
        path = folder / f"{name}.png"
        page.screenshot(path=str(path))
        if os.environ.get("SAVE_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(exist_ok=True)
            shutil.copy2(path, SCREENSHOTS / path.name)
        return path

    return save


def wait_for_panels(page, n: int) -> None:
    """Until exactly ``n`` word panels are on the page and every one of them is visible."""
    page.wait_for_function("([selector, n]) => { const imgs = document.querySelectorAll(selector);"
                           " return imgs.length === n && [...imgs].every(i => i.complete && i.naturalWidth > 0); }",
                           arg=[PANEL_IMAGES, n])
    panels = page.locator(PANEL_IMAGES)
    for i in range(n):
        sync_api.expect(panels.nth(i)).to_be_visible()


def wait_until_idle(page) -> None:
    """Until Streamlit has finished the current run (its status widget gone)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")


def test_deep_link_shows_one_panel_per_word(server, page, shots):
    bundle = server["bundle"]
    image_id = bundle.image_ids[1]
    sentence = bundle.captions[image_id][0]
    page.goto(f"{server['url']}/?image={quote(image_id)}&q={quote(sentence)}")
    words = sentence.split()
    wait_for_panels(page, len(words))
    wait_until_idle(page)
    captions = page.locator('.st-key-word_panels [data-testid="stImageCaption"]').all_inner_texts()
    assert [c.split(" \u00b7 ")[0] for c in captions] == words
    sync_api.expect(page.get_by_text(f"{len(words)} word panels")).to_be_visible()
    shots(page, "explore-deep-link")


def test_upload_a_png(server, page, shots, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(640, 480))
    page.goto(server["url"])
    page.get_by_role("radio", name="Upload").click()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(photo))
    page.get_by_label("Sentence").fill("a red car on the road")
    page.get_by_label("Sentence").press("Enter")
    wait_for_panels(page, 6)
    wait_until_idle(page)
    assert page.locator('[data-testid="stAlert"]').filter(has_text="error").count() == 0
    shots(page, "explore-upload")


def test_retrieval_result_opens_in_explore(server, page, shots):
    bundle = server["bundle"]
    image_id = bundle.image_ids[5]
    sentence = bundle.captions[image_id][1]
    page.goto(f"{server['url']}/retrieve")
    page.get_by_label("Sentence").fill(sentence)
    page.get_by_label("Sentence").press("Enter")
    explore_buttons = page.get_by_role("button", name="Explore")
    sync_api.expect(explore_buttons).to_have_count(10)
    wait_until_idle(page)
    # the truth marks are text (a check mark DejaVu Sans draws, and a word), not emoji that Debian's Chromium, which
    # has no emoji font, drew as the same empty box for own and false
    sync_api.expect(page.get_by_text("\u2713 own").first).to_be_visible()
    shots(page, "retrieve")
    explore_buttons.nth(1).click()
    page.wait_for_url("**/?image=*")
    query = parse_qs(urlparse(page.url).query)
    assert query["q"] == [sentence] and query["image"][0] in bundle.image_ids
    wait_for_panels(page, len(sentence.split()))
    sync_api.expect(page.get_by_role("heading", name="Explore")).to_be_visible()
    shots(page, "retrieve-to-explore")


def test_compare_link_shows_the_heads_side_by_side(server, page, shots):
    """?compare=scan_t2i,chan,caan: one column per head, each with its picture, score and rank (the README's
    docs/app-compare.png is this test's screenshot, saved with SAVE_SCREENSHOTS=1)."""
    bundle = server["bundle"]
    image_id = bundle.image_ids[1]
    sentence = bundle.captions[image_id][0]
    heads = ["scan_t2i", "chan", "caan"]
    page.goto(f"{server['url']}/?image={quote(image_id)}&q={quote(sentence)}&compare={','.join(heads)}")
    wait_for_panels(page, len(sentence.split()))
    compare = page.locator(".st-key-compare")
    sync_api.expect(compare.locator('[data-testid="stHeading"]')).to_have_text(heads)
    sync_api.expect(compare.get_by_text("rank", exact=False)).to_have_count(3)
    pictures = compare.locator('[data-testid="stImage"] img')
    sync_api.expect(pictures).to_have_count(3)
    for i in range(3):
        sync_api.expect(pictures.nth(i)).to_be_visible()
    wait_until_idle(page)
    assert page.locator('[data-testid="stAlert"]').filter(has_text="error").count() == 0
    compare.scroll_into_view_if_needed()
    shots(compare, "app-compare")


NOTED_KEYS = ("k", "model", "head", "dir", "agg", "lsm", "lse", "norm")
LOCAL = ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")
INJECTED = 'a[href*="evil.example"], a[href^="javascript:"], img[src*="evil.example"], img[src="x"]'


@pytest.mark.parametrize("payload", INJECTION_PAYLOADS)
def test_link_payloads_stay_text_and_nothing_leaves_the_server(server, page, payload):
    requests, dialogs = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    keys = {"image": payload, **{key: payload for key in NOTED_KEYS}}
    page.goto(f"{server['url']}/?{urlencode(keys)}")
    alerts = page.locator('[data-testid="stAlert"]')
    page.wait_for_function("n => document.querySelectorAll('[data-testid=\"stAlert\"]').length >= n",
                           arg=len(NOTED_KEYS) + 1)
    wait_until_idle(page)
    texts = alerts.all_inner_texts()
    assert sum(payload in text for text in texts) == len(NOTED_KEYS) + 1, texts  # each key's note, the image's error
    assert page.locator(INJECTED).count() == 0

    image_id = server["bundle"].image_ids[0]
    page.goto(f"{server['url']}/?{urlencode({'image': image_id, 'q': payload, 'word': payload})}")
    page.wait_for_selector(PANEL_IMAGES)
    wait_until_idle(page)
    sync_api.expect(page.get_by_label("Sentence")).to_have_value(payload)
    assert any(payload.lower() in text for text in alerts.all_inner_texts())
    assert page.locator(INJECTED).count() == 0
    assert page.locator("script", has_text="alert(1)").count() == 0 and dialogs == []
    off_host = [url for url in requests if not url.startswith(LOCAL)]
    assert off_host == [] and requests, off_host
