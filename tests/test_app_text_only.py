"""The app on a gallery built from official precomputed features (``scan-viz gallery build`` from
``{split}_ims.npy``): no images, no boxes. Explore, Retrieve and Evaluate say what they cannot draw and still give
the score, its rank, retrieval, recall and the failure list as text (issue 17)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_fixture import app_fixture
from scan_viz.app import explore
from scan_viz.app.bundle import NO_BOXES, NO_PICTURES
from scan_viz.gallery import load_gallery
from scan_viz.gallery.build import build_gallery

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = {"Retrieve": "scan_viz/app/retrieve.py", "Evaluate": "scan_viz/app/evaluate.py"}
TIMEOUT = 120


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    """The fixture's model and a gallery of its images' features in the official precomp layout."""
    fixture = app_fixture()
    source = load_gallery(fixture.gallery)
    data = tmp_path_factory.mktemp("precomp")
    np.save(data / "test_ims.npy", np.asarray(source.regions.features, dtype=np.float32))
    (data / "test_caps.txt").write_text("".join(c + "\n" for c in source.captions), encoding="utf-8")
    build_gallery(data / "test_ims.npy", data / "gallery")
    return fixture, load_gallery(data / "gallery")


@pytest.fixture
def app(text_only, monkeypatch) -> AppTest:
    fixture, gallery = text_only
    monkeypatch.setenv("SCAN_VIZ_MODEL", str(fixture.model))
    monkeypatch.setenv("SCAN_VIZ_DETECTOR", str(fixture.detector))
    monkeypatch.setenv("SCAN_VIZ_GALLERY", str(gallery.root))
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def infos(at: AppTest) -> list[str]:
    return [i.value for i in at.info]


def test_explore_gives_score_rank_and_relevance_as_text(app, text_only):
    _, gallery = text_only
    sentence = gallery.captions_of("3")[0]
    at = app
    at.query_params["image"] = "3"
    at.query_params["q"] = sentence
    at.run()
    no_exception(at)
    assert NO_PICTURES in infos(at)
    assert any(m.value.startswith(explore.SCORE_LABEL) for m in at.markdown)
    assert at.session_state[explore.RANK_MARKER] >= 1
    assert at.session_state[explore.VERDICT_MARKER] == "own"
    assert not at.image  # nothing drawn, nothing fetched
    assert at.dataframe and "word" in at.dataframe[0].value.columns  # per-word relevance as a table


def test_explore_picker_lists_ids_without_thumbnails(app):
    at = app.run()
    no_exception(at)
    assert {b.key for b in at.button} >= {f"pick_{i}" for i in range(12)}
    at.button(key="pick_5").click().run()
    no_exception(at)
    assert at.session_state[explore.IMAGE_KEY] == "5"


def test_retrieve_ranks_images_and_captions_as_text(app, text_only):
    _, gallery = text_only
    at = app.run()
    at.switch_page(PAGES["Retrieve"]).run()
    at.text_input(key="rt_q").input(gallery.captions_of("4")[1]).run()
    no_exception(at)
    assert NO_PICTURES in infos(at)
    assert len(at.session_state["retrieve_results"]) > 0 and not at.image
    at.session_state["rt_tab"] = "Image \u2192 text"
    at.run()
    at.selectbox(key="rt_image").set_value("6").run()
    no_exception(at)
    open_buttons = [b for b in at.button if (b.key or "").startswith("rt_open_caption_")]
    assert open_buttons and not at.image
    open_buttons[0].click().run()  # the pair opens in Explore, as text
    no_exception(at)
    assert at.title[0].value == "Explore" and at.query_params["image"] == "6"
    assert any(m.value.startswith(explore.SCORE_LABEL) for m in at.markdown)


def test_evaluate_gives_recall_and_failures(app):
    at = app.run()
    at.switch_page(PAGES["Evaluate"]).run()
    no_exception(at)
    start = [b for b in at.button if b.label == "Evaluate on the gallery"]
    if start:
        start[0].click().run()
    no_exception(at)
    assert any(m.label == "rsum" for m in at.metric) and at.dataframe
    assert NO_BOXES in infos(at)
    at.slider(key="ev_k").set_value(1).run()
    failures = [b for b in at.button if (b.key or "").startswith("ev_top_")]
    assert failures and at.session_state["evaluate_failures"] > 0  # the untrained fixture model fails some at K = 1
    failures[0].click().run()
    no_exception(at)
    assert at.title[0].value == "Explore"
    assert any(m.value.startswith(explore.SCORE_LABEL) for m in at.markdown)
