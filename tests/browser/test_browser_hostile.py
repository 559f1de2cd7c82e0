"""A visitor's model whose strings are Markdown, uploaded on the Model page in a real browser: the model card shows
them as text, no link to their site appears and the browser asks nothing of any host but the app's.

Uses test_browser.py's server (a real ``streamlit run app.py`` on the fixture bundle) and Chromium; skipped with
the same reasons.
"""
from __future__ import annotations

import json

from test_browser import LOCAL, browser, page, server, sync_api, wait_until_idle  # noqa: F401 - fixtures
from test_browser_uploads import UPLOADERS, as_payload

from scan_viz.app.user_files import Upload
from test_app import write_npz_regions

LINK = "[Session expired, log in again](https://evil.example/login)"
#: A config.json's extra: keys and values the card shows (values without "/", which the card shows as a path's
#: last part; keys are shown whole). Rendered, the image key would make the browser fetch from evil.example.
EXTRA = {"[key](https://evil.example/k)": "<img src=x onerror=alert(1)>",
         "![t](https://evil.example/t.png)": "[x](javascript:alert(1)) www.evil.example **bold**"}
INJECTED = 'a[href*="evil.example"], a[href^="javascript:"], img[src*="evil.example"], img[src="x"]'


def model_folder(bundle) -> list[Upload]:
    """The fixture model as a scan-viz model folder's files, its config.json carrying the Markdown."""
    config = json.loads((bundle.model / "config.json").read_text(encoding="utf-8"))
    config.update(data_name=LINK, extra=EXTRA)
    return [Upload("config.json", json.dumps(config).encode()),
            Upload("model.safetensors", (bundle.model / "model.safetensors").read_bytes()),
            Upload("vocab.json", (bundle.model / "vocab.json").read_bytes())]


def test_a_models_markdown_strings_show_as_text_on_the_model_card(server, page, tmp_path):  # noqa: F811
    bundle = server["bundle"]
    ids = list(bundle.image_ids[:4])
    write_npz_regions(bundle, tmp_path / "npz", ids)
    regions = [Upload(f"{i}.npz", (tmp_path / "npz" / f"{i}.npz").read_bytes()) for i in ids]
    images = [Upload(f"{i}.jpg", (bundle.gallery / "images" / f"{i}.jpg").read_bytes()) for i in ids]
    requests, dialogs = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(f"{server['url']}/model")
    page.get_by_role("radio", name="Upload your own").click()
    inputs = page.locator(UPLOADERS)
    sync_api.expect(inputs).to_have_count(4)
    inputs.nth(0).set_input_files(as_payload(model_folder(bundle)))  # no separate vocabulary file
    inputs.nth(2).set_input_files(as_payload(regions))
    inputs.nth(3).set_input_files(as_payload(images))
    sync_api.expect(page.get_by_text("model.safetensors", exact=True)).to_be_visible()
    page.get_by_role("button", name="Load", exact=True).click()
    sync_api.expect(page.get_by_text("Now serving your upload (scan-viz model)")).to_be_visible()
    wait_until_idle(page)

    cells = page.locator('[data-testid="stTable"] td, [data-testid="stTable"] th')
    # the card's tables render one after another: wait for the last of the hostile strings' rows to be drawn
    sync_api.expect(cells.filter(has_text="evil.example/login").first).to_be_visible()
    shown = cells.all_inner_texts()
    for text in (LINK, *EXTRA, *EXTRA.values()):
        assert text in shown, (text, shown)  # the characters as written, not rendered
    assert page.locator(INJECTED).count() == 0
    assert page.locator('[data-testid="stTable"] a, [data-testid="stTable"] img, [data-testid="stTable"] strong'
                        ).count() == 0
    assert page.get_by_test_id("stAlertContentError").count() == 0 and dialogs == []
    off_host = [url for url in requests if not url.startswith(LOCAL)]
    assert off_host == [] and requests, off_host
