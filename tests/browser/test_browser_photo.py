"""The zero-shot photo model in a real browser: Explore on a real photo of the photo gallery, and an upload.

A real ``streamlit run app.py`` serves ``photo-zeroshot`` with ``examples/photos``; Chromium opens a deep link to
scikit-image's cat photo (chelsea, CC0) with a sentence and sees one panel per word and the model's honest label
beside the picture; then uploads a photo and sees the progress status end with the number of regions. The
Explore screenshot is the README's ``docs/photo-explore.png`` (written there with SAVE_SCREENSHOTS=1).
"""
from __future__ import annotations

import os
import shutil
from urllib.parse import quote

import pytest

from test_browser import browser, page, shots  # noqa: F401 (fixtures)
from test_browser import REPO, streamlit_app, sync_api, wait_for_panels, wait_until_idle

PHOTOS = REPO / "examples" / "photos"
DOCS_SHOT = REPO / "docs" / "photo-explore.png"

if not (PHOTOS / "gallery.json").is_file():
    pytest.skip("examples/photos has no gallery.json: python -m scan_viz.train.photo build-gallery", allow_module_level=True)


@pytest.fixture(scope="module")
def photo_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {**os.environ, "SCAN_VIZ_MODEL": "photo-zeroshot", "SCAN_VIZ_GALLERY": str(PHOTOS),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SCAN_VIZ_DETECTOR", None)
    with streamlit_app(env, log) as url:
        yield url


def test_explore_on_a_real_photo(photo_server, page, shots):  # noqa: F811
    sentence = "a brown cat with a pink nose"
    page.goto(f"{photo_server}/?image=chelsea&q={quote(sentence)}")
    wait_for_panels(page, len(sentence.split()))
    wait_until_idle(page)
    sync_api.expect(page.get_by_text("Zero-shot model", exact=False).first).to_be_visible()
    assert page.locator('[data-testid="stAlert"]').filter(has_text="error").count() == 0
    path = shots(page, "photo-explore")
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        shutil.copy2(path, DOCS_SHOT)


def test_upload_shows_progress_then_panels(photo_server, page, tmp_path):  # noqa: F811
    page.goto(photo_server)
    page.get_by_role("radio", name="Upload").click()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(PHOTOS / "images" /
                                                                                          "coffee.jpg"))
    page.get_by_label("Sentence").fill("a cup of coffee")
    page.get_by_label("Sentence").press("Enter")
    wait_for_panels(page, 4)
    wait_until_idle(page)
    sync_api.expect(page.get_by_text("regions found", exact=False).first).to_be_visible()
    assert page.locator('[data-testid="stAlert"]').filter(has_text="error").count() == 0
