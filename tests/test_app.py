"""The Streamlit app with ``streamlit.testing.v1.AppTest`` on a tiny fixture bundle (tests/app_fixture.py).

Every page renders; Explore's deep link draws one panel per word with no click; controls recompute; results open
in Explore; user errors (a bad link, a bad upload, bad model paths) are one-line messages, never exceptions.
The deep-link parsing rules are tested without Streamlit.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from app_fixture import app_fixture, png_bytes
from streamlit.testing.v1 import AppTest

from scan_viz.app import explore, state
from scan_viz.app.params import (ExploreParams, HeadSettings, explore_query, link_changed, normalise_query,
                                 parse_explore_query)
from scan_viz.errors import ScanVizError

torch.set_num_threads(1)

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = {"Retrieve": "scan_viz/app/retrieve.py", "Evaluate": "scan_viz/app/evaluate.py",
         "Model": "scan_viz/app/models.py"}
TIMEOUT = 120


@pytest.fixture(scope="session")
def bundle():
    return app_fixture()


@pytest.fixture
def app(bundle, monkeypatch) -> AppTest:
    """An AppTest of app.py serving the fixture bundle (not yet run)."""
    for name, value in bundle.env().items():
        monkeypatch.setenv(name, value)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def panel_images(at: AppTest) -> list[str]:
    """Captions of the word panels on screen (each panel caption is 'word · R = ... · region weight')."""
    return [c for im in at.image for c in im.captions if "\u00b7" in c]


def open_link(at: AppTest, **params: str) -> AppTest:
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def score(at: AppTest) -> float:
    return float(next(m.value for m in at.metric if m.label == "Score"))


# ----------------------------------------------------------------------------- pure helpers


def test_parse_explore_query_reads_every_key_and_drops_bad_values():
    params, notes = parse_explore_query({"image": " test_000001 ", "q": "a  red\tcar", "word": "Car", "dir": "I2T",
                                         "k": "7", "head": "scan"})
    assert params == ExploreParams(image="test_000001", q="a red car", word="car", dir="i2t", k=7, head="scan")
    assert notes == []
    params, notes = parse_explore_query({"dir": "sideways", "k": "ten", "q": ["first", "last"]})
    assert params.dir is None and params.k is None and params.q == "last"
    assert len(notes) == 2 and all("\n" not in n for n in notes)
    params, notes = parse_explore_query({"k": "100000", "q": "x" * 2000})
    assert params.k == 100 and len(params.q) == 500 and len(notes) == 2


def test_explore_query_round_trips_and_orders_keys():
    params = ExploreParams(image="a b", q="two birds", word="birds", k=5)
    query = explore_query(params)
    assert list(query) == ["image", "q", "word", "k"]
    assert parse_explore_query(query)[0] == params
    assert explore_query(ExploreParams()) == {}


def test_link_changed_ignores_empty_and_own_links():
    written = {"image": "x", "q": "a dog"}
    assert not link_changed({}, written)
    assert not link_changed({"q": "a dog", "image": ["x"]}, written)
    assert link_changed({"image": "y", "q": "a dog"}, written)
    assert link_changed({"image": "x"}, None)
    assert normalise_query({"q": "  ", "other": "1"}) == {}


def test_head_settings_validate_and_build(bundle):
    from scan_viz.model import load_model

    model = load_model(bundle.model)
    settings = HeadSettings.from_config(model.config)
    assert settings.direction == model.config.cross_attn
    head = HeadSettings(direction="i2t", agg_func="Mean").build(model)
    assert head.direction == "i2t" and head.params.agg_func == "Mean"
    with pytest.raises(ScanVizError):
        HeadSettings(agg_func="Median")


def test_read_upload_refuses_bad_bytes_with_one_line():
    from scan_viz.app.uploads import read_upload

    for data, name in ((b"not an image at all", "photo.png"), (b"", "empty.jpg"), (png_bytes()[:200], "cut.png"),
                       (png_bytes(), "photo.gif")):
        with pytest.raises(ScanVizError) as info:
            read_upload(data, name)
        message = str(info.value)
        assert name in message and "\n" not in message and "Traceback" not in message
    assert read_upload(png_bytes(64, 48), "ok.png").shape == (48, 64, 3)


# ----------------------------------------------------------------------------- Explore


def test_deep_link_shows_one_panel_per_word_with_no_click(app, bundle):
    image_id = bundle.image_ids[1]
    sentence = bundle.captions[image_id][0]
    at = open_link(app, image=image_id, q=sentence)
    no_exception(at)
    assert not at.error
    words = sentence.split()
    assert at.session_state[explore.PANELS_MARKER] == words
    assert len(panel_images(at)) == len(words)
    assert any(c.startswith(f"{words[0]} \u00b7 R = ") for c in panel_images(at))
    assert at.query_params["image"] == image_id and at.query_params["q"] == sentence
    assert {"Panels (PNG)", "Panels (SVG)", "Alignment (JSON)"} <= {b.label for b in at.download_button}


def test_deep_link_sets_direction_word_and_k(app, bundle):
    image_id = bundle.image_ids[2]
    sentence = bundle.captions[image_id][0]
    word = sentence.split()[1]
    at = open_link(app, image=image_id, q=sentence, dir="i2t", word=word, k="5")
    no_exception(at)
    assert at.session_state[state.DIR_KEY] == "i2t"
    assert at.query_params == {"image": image_id, "q": sentence, "word": word, "dir": "i2t", "k": "5"}
    at.session_state[explore.TAB_KEY] = "Interactive"
    at.run()
    no_exception(at)
    assert at.session_state[explore.WORD_KEY] == 2  # <start> is 0


def test_picking_an_image_and_a_caption_writes_the_link(app, bundle):
    at = app.run()
    no_exception(at)
    assert explore.PANELS_MARKER not in at.session_state
    image_id = bundle.image_ids[3]
    at.button(key=f"pick_{image_id}").click().run()
    caption = bundle.captions[image_id][2]
    at.pills(key=explore.EXAMPLES_KEY).set_value(caption).run()
    no_exception(at)
    assert at.session_state[explore.Q_KEY] == caption
    assert at.query_params == {"image": image_id, "q": caption}
    assert len(panel_images(at)) == len(caption.split())


def test_controls_recompute_the_score(app, bundle):
    image_id = bundle.image_ids[0]
    at = open_link(app, image=image_id, q=bundle.captions[image_id][0])
    base = score(at)
    at.segmented_control(key=state.DIR_KEY).set_value("i2t").run()
    no_exception(at)
    flipped = score(at)
    assert flipped != pytest.approx(base, abs=1e-6)
    assert at.query_params["dir"] == "i2t"
    at.selectbox(key=state.AGG_KEY).set_value("Mean").run()
    assert score(at) != pytest.approx(flipped, abs=1e-6)
    at.slider(key=state.LAMBDA_SOFTMAX_KEY).set_value(2.0).run()
    no_exception(at)
    reset = next(b for b in at.sidebar.button if b.label.startswith("Reset"))
    reset.click().run()
    assert score(at) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("tab", ["Interactive", "Image \u2192 text", "Relevance", "Ablation"])
def test_every_explore_view_renders(app, bundle, tab):
    image_id = bundle.image_ids[4]
    at = open_link(app, image=image_id, q=bundle.captions[image_id][0])
    at.session_state[explore.TAB_KEY] = tab
    at.run()
    no_exception(at)
    assert not at.error
    if tab == "Ablation":
        assert any("relies most on" in m.value or "raises the score" in m.value for m in at.markdown)


def test_unknown_image_in_the_link_is_one_line_and_the_app_goes_on(app, bundle):
    at = open_link(app, image="no_such_image", q="a red car")
    no_exception(at)
    assert len(at.error) == 1 and "no_such_image" in at.error[0].value and "\n" not in at.error[0].value
    assert "image" not in at.query_params
    at.button(key=f"pick_{bundle.image_ids[0]}").click().run()
    no_exception(at)
    assert len(panel_images(at)) == 3  # "a red car"


def test_bad_link_values_are_noted_not_fatal(app, bundle):
    at = open_link(app, image=bundle.image_ids[0], q="two birds", dir="sideways", k="many", head="nope")
    no_exception(at)
    notes = " ".join(w.value for w in at.warning)
    assert "dir" in notes and "k=" in notes and "nope" in notes
    assert len(panel_images(at)) == 2


def test_empty_sentence_asks_for_one(app, bundle):
    at = open_link(app, image=bundle.image_ids[0])
    no_exception(at)
    assert not at.error
    assert any("Type a sentence" in i.value for i in at.info)
    assert explore.PANELS_MARKER not in at.session_state
    at.text_input(key=explore.Q_KEY).input("   ").run()
    no_exception(at)
    assert any("Type a sentence" in i.value for i in at.info)


def test_all_unknown_sentence_works_and_says_so(app, bundle):
    at = open_link(app, image=bundle.image_ids[0], q="zyzzyva quux")
    no_exception(at)
    assert not at.error
    assert any("None of the words" in w.value for w in at.warning)
    assert at.session_state[explore.PANELS_MARKER] == ["zyzzyva", "quux"]
    assert all("<unk>" in c for c in panel_images(at))


def test_upload_runs_the_detector_and_bad_bytes_are_one_line(app):
    at = app.run()
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    at.text_input(key=explore.Q_KEY).input("a red car on the road").run()
    at.file_uploader[0].set_value(("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")).run()
    no_exception(at)
    assert len(at.error) == 1 and "broken.png" in at.error[0].value and "\n" not in at.error[0].value
    at.file_uploader[0].set_value(("photo.png", png_bytes(), "image/png")).run()
    no_exception(at)
    assert not at.error
    assert at.session_state[explore.PANELS_MARKER] == ["a", "red", "car", "on", "the", "road"]
    assert "image" not in at.query_params and at.query_params["q"] == "a red car on the road"


# ----------------------------------------------------------------------------- Retrieve, Evaluate, Model


def test_every_page_renders(app):
    at = app.run()
    no_exception(at)
    for title, path in PAGES.items():
        at.switch_page(path).run()
        no_exception(at)
        assert at.title[0].value == title
        assert not at.error


def test_retrieve_text_to_image_opens_the_pair_in_explore(app, bundle):
    at = app.run()
    at.switch_page(PAGES["Retrieve"]).run()
    image_id = bundle.image_ids[5]
    sentence = bundle.captions[image_id][1]
    at.slider(key="rt_k").set_value(len(bundle.image_ids)).run()
    at.text_input(key="rt_q").input(sentence).run()
    no_exception(at)
    results = at.session_state["retrieve_results"]
    assert sorted(results) == sorted(bundle.image_ids)  # K = every image, so the truth is listed
    marks = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert sum("\u2705" in m for m in marks) == 1
    at.button(key=f"rt_open_{results[0]}").click().run()
    no_exception(at)
    assert at.title[0].value == "Explore"
    assert at.query_params["image"] == results[0] and at.query_params["q"] == sentence
    assert at.session_state[explore.PANELS_MARKER] == sentence.split()


def test_retrieve_image_to_text_opens_the_pair_in_explore(app, bundle):
    at = app.run()
    at.switch_page(PAGES["Retrieve"]).run()
    at.session_state["rt_tab"] = "Image \u2192 text"
    at.run()
    no_exception(at)
    image_id = bundle.image_ids[6]
    at.selectbox(key="rt_image").set_value(image_id).run()
    open_buttons = [b for b in at.button if (b.key or "").startswith("rt_open_caption_")]
    assert len(open_buttons) == 10
    open_buttons[0].click().run()
    no_exception(at)
    assert at.title[0].value == "Explore" and at.query_params["image"] == image_id


def test_evaluate_lists_failures_worst_first_and_opens_them(app, bundle):
    at = app.run()
    at.switch_page(PAGES["Evaluate"]).run()
    no_exception(at)
    at.button[0].click().run()
    no_exception(at)
    assert any(m.label == "rsum" for m in at.metric)
    at.slider(key="ev_k").set_value(1).run()
    n_failures = at.session_state["evaluate_failures"]
    assert n_failures > 0  # a random model ranks most captions' images below the top 1
    truth = next(b for b in at.button if (b.key or "").startswith("ev_truth_t2i_"))
    caption_index = int(truth.key.rsplit("_", 1)[1])
    truth.click().run()
    no_exception(at)
    assert at.title[0].value == "Explore"
    image_id = at.query_params["image"]
    assert bundle.captions[image_id] and at.query_params["q"] in bundle.captions[image_id]
    assert caption_index >= 0


def test_model_page_refuses_bad_paths_with_one_line(app, tmp_path):
    at = app.run()
    at.switch_page(PAGES["Model"]).run()
    at.segmented_control(key="md_kind").set_value("Your checkpoint and data").run()
    at.text_input(key="md_checkpoint").input(str(tmp_path / "missing.pth.tar"))
    at.text_input(key="md_vocab").input(str(tmp_path / "vocab.json"))
    at.text_input(key="md_regions").input(str(tmp_path / "regions"))
    at.text_input(key="md_images").input(str(tmp_path / "images"))
    at.form_submit_button[0].click().run()
    no_exception(at)
    assert len(at.error) == 1 and "missing.pth.tar" in at.error[0].value and "\n" not in at.error[0].value
    at.text_input(key="md_checkpoint").input("")
    at.form_submit_button[0].click().run()
    assert len(at.error) == 1 and "checkpoint" in at.error[0].value
    at.switch_page(PAGES["Retrieve"]).run()  # the default model still serves
    no_exception(at)
    assert not at.error


def write_npz_regions(bundle, folder: Path, ids: list[str], img_dim: int | None = None) -> None:
    """The fixture gallery's regions as bottom-up-attention.pytorch .npz files (one per image)."""
    from scan_viz.gallery import load_gallery

    gallery = load_gallery(bundle.gallery)
    folder.mkdir()
    for image_id in ids:
        features, boxes, _ = gallery.regions_of(image_id)
        if img_dim is not None:
            features = np.resize(features, (features.shape[0], img_dim))
        record = gallery.records[gallery.index_of(image_id)]
        np.savez(folder / f"{image_id}.npz", x=features, bbox=boxes, num_bbox=len(boxes),
                 image_h=record["height"], image_w=record["width"])


@pytest.fixture
def user_data(bundle, tmp_path):
    """An official checkpoint + vocab of the fixture model, its regions as .npz, and an images folder."""
    from scan_viz.checkpoint import write_official_checkpoint
    from scan_viz.model import load_model

    model = load_model(bundle.model)
    write_official_checkpoint(tmp_path / "model_best.pth.tar", model.config, model.image_encoder.state_dict(),
                              model.text_encoder.state_dict())
    model.vocab.save(tmp_path / "vocab.json")
    images = tmp_path / "images"
    images.mkdir()
    ids = list(bundle.image_ids[:4])
    for image_id in ids:
        (images / f"{image_id}.jpg").write_bytes((bundle.gallery / "images" / f"{image_id}.jpg").read_bytes())
    write_npz_regions(bundle, tmp_path / "regions", ids)
    return tmp_path, ids


def submit_user_data(at: AppTest, folder: Path, regions: str = "regions", images: str = "images") -> AppTest:
    at.switch_page(PAGES["Model"]).run()
    at.segmented_control(key="md_kind").set_value("Your checkpoint and data").run()
    at.text_input(key="md_checkpoint").input(str(folder / "model_best.pth.tar"))
    at.text_input(key="md_vocab").input(str(folder / "vocab.json"))
    at.text_input(key="md_regions").input(str(folder / regions))
    at.text_input(key="md_images").input(str(folder / images))
    return at.form_submit_button[0].click().run()


def test_model_page_serves_an_official_checkpoint_with_user_regions(app, user_data):
    folder, ids = user_data
    at = submit_user_data(app.run(), folder)
    no_exception(at)
    assert not at.error
    assert any("Now serving" in s.value for s in at.success)
    at.switch_page("scan_viz/app/explore.py")
    at.query_params.update({"image": ids[1], "q": "two birds"})
    at.run()
    no_exception(at)
    assert not at.error
    assert at.session_state[explore.PANELS_MARKER] == ["two", "birds"]
    at.switch_page(PAGES["Evaluate"]).run()
    no_exception(at)
    assert any("no captions" in i.value for i in at.info)


def test_model_page_says_when_the_pieces_do_not_fit(app, bundle, user_data):
    folder, ids = user_data
    write_npz_regions(bundle, folder / "wide", ids, img_dim=50)
    at = submit_user_data(app.run(), folder, regions="wide")
    no_exception(at)
    assert len(at.error) == 1 and "50-d" in at.error[0].value and "44-d" in at.error[0].value
    (folder / "images" / f"{ids[0]}.jpg").unlink()
    at = submit_user_data(at, folder)
    assert len(at.error) == 1 and repr(ids[0]) in at.error[0].value and "\n" not in at.error[0].value


def test_missing_bundled_model_is_one_line_on_every_page(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("SCAN_VIZ_MODEL", str(tmp_path / "no-model"))
    monkeypatch.setenv("SCAN_VIZ_GALLERY", str(bundle.gallery))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_exception(at)
    assert len(at.error) == 1 and "no-model" in at.error[0].value
    for path in PAGES.values():
        at.switch_page(path).run()
        no_exception(at)
        assert len(at.error) == 1


def test_model_card_shows_bundled_metrics_and_switches_bundled_models(bundle, monkeypatch, tmp_path):
    import shutil

    import scan_viz.app.bundle as app_bundle
    import scan_viz.model as scan_model

    pretrained = tmp_path / "pretrained"
    for name in ("scan-emoji-t2i", "scan-emoji-i2t"):
        shutil.copytree(bundle.model, pretrained / name)
    metrics = {"i2t": {"r1": 12.5, "r5": 40.0, "r10": 60.0, "medr": 7.0, "meanr": 8.0},
               "t2i": {"r1": 10.0, "r5": 35.0, "r10": 55.0, "medr": 8.0, "meanr": 9.0},
               "rsum": 212.5, "pointing_accuracy": 41.2}
    (pretrained / "metrics.json").write_text(json.dumps({"scan-emoji-t2i": metrics, "detector": {"map50": 0.61}}))
    monkeypatch.setattr(scan_model, "PRETRAINED_DIR", pretrained)
    monkeypatch.setattr(app_bundle, "PRETRAINED_DIR", pretrained)
    monkeypatch.setattr(app_bundle, "METRICS_FILE", pretrained / "metrics.json")
    monkeypatch.setenv("SCAN_VIZ_MODEL", "scan-emoji-t2i")
    monkeypatch.setenv("SCAN_VIZ_GALLERY", str(bundle.gallery))
    monkeypatch.setenv("SCAN_VIZ_DETECTOR", str(bundle.detector))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page(PAGES["Model"]).run()
    no_exception(at)
    assert "rsum 212.5" in " ".join(c.value for c in at.caption) and "mAP@0.5 0.610" in " ".join(
        c.value for c in at.caption)
    assert at.dataframe[0].value["R@1"].tolist() == [12.5, 10.0]
    at.selectbox(key="md_bundled_name").set_value("scan-emoji-i2t")
    at.form_submit_button[0].click().run()
    no_exception(at)
    assert not at.error and any("Now serving scan-emoji-i2t" in s.value for s in at.success)
    assert at.subheader[0].value == "Serving scan-emoji-i2t"
