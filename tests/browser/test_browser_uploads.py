"""A visitor's own model and data, uploaded in a real browser on the Model page, served to that visitor only.

Uses test_browser.py's server (a real ``streamlit run app.py`` on the fixture bundle, no allowed roots: server
paths are off) and Chromium; skipped with the same reasons.
"""
from __future__ import annotations

from test_browser import browser, page, server, sync_api, wait_until_idle  # noqa: F401 - fixtures
from test_security import upload_files

UPLOADERS = '[data-testid="stFileUploader"] input[type="file"]'


def as_payload(uploads) -> list[dict]:
    return [{"name": u.name, "mimeType": "application/octet-stream", "buffer": u.data} for u in uploads]


def test_upload_a_checkpoint_with_its_data(server, browser, page, tmp_path):  # noqa: F811 - fixtures
    bundle = server["bundle"]
    files = upload_files(bundle, tmp_path)
    page.goto(f"{server['url']}/model")
    page.get_by_role("radio", name="Files on this server").click()
    sync_api.expect(page.get_by_text("Reading files on this server is off")).to_be_visible()
    page.get_by_role("radio", name="Upload your own").click()
    inputs = page.locator(UPLOADERS)
    sync_api.expect(inputs).to_have_count(4)
    for i, kind in enumerate(("checkpoint", "vocab", "regions", "images")):
        inputs.nth(i).set_input_files(as_payload(files[kind]))
    for name in ("model_best.pth.tar", "vocab.json", files["images"][-1].name):
        sync_api.expect(page.get_by_text(name, exact=True).first).to_be_visible()
    page.get_by_role("button", name="Load", exact=True).click()
    sync_api.expect(page.get_by_text("Now serving your upload (model_best.pth.tar)")).to_be_visible()
    wait_until_idle(page)
    # this session now serves the upload on every page
    page.get_by_role("link", name="Retrieve").click()
    sync_api.expect(page.get_by_role("heading", name="Retrieve")).to_be_visible()
    sync_api.expect(page.get_by_test_id("stSidebar").get_by_text(
        "Serving your upload (model_best.pth.tar) on uploaded-images (4 images)")).to_be_visible()
    assert page.get_by_test_id("stAlertContentError").count() == 0
    # another visitor still gets the default model
    other = browser.new_context().new_page()
    other.goto(f"{server['url']}/model")
    sync_api.expect(other.get_by_role("heading", name=f"Serving {bundle.model.name}")).to_be_visible()
    other.context.close()
