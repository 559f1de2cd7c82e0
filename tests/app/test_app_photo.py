"""Every app page on the zero-shot photo model and the photo gallery (AppTest): the same pages, unchanged.

Explore (a deep link: one panel per word, the model's label beside the photo, the same score as the library),
Compare, Retrieve, Evaluate, Learn and the Model page's card (its zero-shot section) run without an exception.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "photos"
APP = str(REPO / "app.py")
SENTENCE = "a brown cat with a pink nose"

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not (PHOTOS / "gallery.json").is_file(),
                                reason="examples/photos has no gallery.json: python -m scan_viz.train.photo build-gallery")


@pytest.fixture
def app(monkeypatch) -> AppTest:
    monkeypatch.setenv("SCAN_VIZ_MODEL", "photo-zeroshot")
    monkeypatch.setenv("SCAN_VIZ_GALLERY", str(PHOTOS))
    monkeypatch.delenv("SCAN_VIZ_DETECTOR", raising=False)
    return AppTest.from_file(APP, default_timeout=300)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_explore_deep_link_on_a_photo(app):
    from scan_viz.app import explore
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import explain, gallery_regions

    app.query_params["image"] = "chelsea"
    app.query_params["q"] = SENTENCE
    app.query_params["compare"] = "scan_t2i,chan"
    at = app.run()
    no_exception(at)
    panels = [c for im in at.image for c in im.captions if "\u00b7" in c]
    assert len(panels) == len(SENTENCE.split())
    assert any("Zero-shot model" in c.value for c in at.caption)
    shown = next(m.value for m in at.markdown if m.value.startswith(explore.SCORE_LABEL))
    model = load_model("photo-zeroshot")
    expected = explain(model, gallery_regions(load_gallery(PHOTOS), "chelsea"), SENTENCE).score
    assert shown[len(explore.SCORE_LABEL):].split()[0] == f"{expected:.4f}"


@pytest.mark.parametrize("page", ["scan_viz/app/retrieve.py", "scan_viz/app/evaluate.py", "scan_viz/app/learn.py",
                                  "scan_viz/app/models.py"])
def test_every_page_runs(app, page):
    app.query_params["image"] = "coffee"
    app.query_params["q"] = "a cup of coffee on a saucer"
    at = app.run()
    at.switch_page(page).run()
    no_exception(at)
    assert not at.error
    assert at.title[0].value == {"retrieve": "Retrieve", "evaluate": "Evaluate", "learn": "Learn",
                                 "models": "Model"}[Path(page).stem]
    if page.endswith("models.py"):
        assert any("Zero-shot" in m.value for m in at.markdown)
        shown = " ".join(str(v) for table in at.table for v in table.value.to_numpy().ravel())
        assert "never saw a caption" in shown and "word_vectors" in shown
        assert any("photo-zeroshot-metrics.json" in m.value for m in at.markdown)  # its test-split metrics


def test_an_emoji_scene_upload_gets_the_drawing_note_and_a_photo_none(app):
    """The photo gallery is too small to calibrate the embedding check; the pixel check (row_flatness) speaks."""
    from scan_viz.app import explore

    at = app.run()
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    at.text_input(key=explore.Q_KEY).input("a bird in the sky").run()
    scene = REPO / "examples" / "gallery" / "images" / "test_000000.jpg"
    at.file_uploader[0].set_value((scene.name, scene.read_bytes(), "image/jpeg")).run()
    no_exception(at)
    assert at.session_state[explore.DOMAIN_MARKER] is False
    [note] = [w.value for w in at.warning if "Out of domain" in w.value]
    assert "generated drawing, not a photograph" in note and "6 of 55 held-out photo files" in note
    photo = PHOTOS / "images" / "chelsea.jpg"
    at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg")).run()
    no_exception(at)
    assert at.session_state[explore.DOMAIN_MARKER] is not False
    assert not any("Out of domain" in w.value for w in at.warning)
