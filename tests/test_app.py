"""The Streamlit app with ``streamlit.testing.v1.AppTest`` on a tiny fixture bundle (tests/app_fixture.py).

Every page renders; Explore's deep link draws one panel per word with no click; controls recompute; results open
in Explore; user errors (a bad link, a bad upload, bad model paths) are one-line messages, never exceptions.
The deep-link parsing rules are tested without Streamlit.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from app_fixture import APP, png_bytes
from app_fixture import APP_TIMEOUT as TIMEOUT
from streamlit.testing.v1 import AppTest

from scan_viz.app import evaluate, explore, models, retrieve, state
from scan_viz.app.bundle import NO_MATCH, search_gallery
from scan_viz.app.params import (ExploreParams, HeadSettings, explore_query, link_changed, normalise_query,
                                 parse_explore_query)
from scan_viz.app.safe_text import literal
from scan_viz.errors import ScanVizError
from scan_viz.types import Alignment

torch.set_num_threads(1)

PAGES = {"Retrieve": "scan_viz/app/retrieve.py", "Evaluate": "scan_viz/app/evaluate.py",
         "Model": "scan_viz/app/models.py"}
# the fixtures ``bundle`` (the fixture bundle) and ``app`` (an AppTest of app.py serving it) are in conftest.py


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def panel_images(at: AppTest) -> list[str]:
    """Captions of the word panels on screen (each panel caption is 'word · R = ... · region weight'), as shown:
    the app writes them as one literal code span."""
    return [c.strip("`").strip() for im in at.image for c in im.captions if "\u00b7" in c]


def open_link(at: AppTest, **params: str) -> AppTest:
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def score(at: AppTest) -> str:
    """The pair's score as the page shows it (4 decimals)."""
    line = next(m.value for m in at.markdown if m.value.startswith(explore.SCORE_LABEL))
    return line[len(explore.SCORE_LABEL):].split()[0]


@functools.lru_cache(maxsize=1)
def library(model_dir: Path, gallery_dir: Path):
    """The fixture's model and gallery, loaded by the library (what the app's numbers must equal)."""
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model

    return load_model(model_dir), load_gallery(gallery_dir)


def library_alignment(bundle, image_id: str, text: str, head: str | None = None, **settings) -> Alignment:
    """The library's alignment of a gallery pair under ``head`` (default: the model's own) with the model's
    settings, ``settings`` changed."""
    from scan_viz.heads import own_head
    from scan_viz.pipeline import explain, gallery_regions

    model, gallery = library(bundle.model, bundle.gallery)
    head = HeadSettings.for_head(head or own_head(model.config), model.config, settings).build(model)
    return explain(model, gallery_regions(gallery, image_id), text, head)


def chart_specs(at: AppTest) -> list[dict]:
    """The plotly figures on screen, as the JSON the browser gets."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def region_names(bundle, image_id: str) -> list[str]:
    """The detector's label of each of the image's regions, as the gallery stores them."""
    from scan_viz.pipeline import gallery_regions

    return list(gallery_regions(library(bundle.model, bundle.gallery)[1], image_id).labels)


def where_it_looks(weights: np.ndarray, names: list[str]) -> str:
    """What the app says of one word's attention over the regions, re-stated: its strongest region and weight, or,
    when no region gets 3 times its even share 1/n (at most halfway to all of it), that the map is flat."""
    share, uniform = weights.max() / weights.sum(), 1 / len(weights)
    if share < min(3 * uniform, (1 + uniform) / 2):
        return f"flat: no region stands out (max {share:.2f}, uniform {uniform:.3f})"
    return f"{names[int(weights.argmax())]} {weights.max():.2f}"


# ----------------------------------------------------------------------------- pure helpers


def test_parse_explore_query_reads_every_key_and_drops_bad_values():
    params, notes = parse_explore_query({"image": " test_000001 ", "q": "a  red\tcar", "word": "Car", "dir": "I2T",
                                         "k": "7", "head": "scan"})
    # links written before heads were named: head=scan with dir=i2t is SCAN image-to-text
    assert params == ExploreParams(image="test_000001", q="a red car", word="car", k=7, head="scan_i2t")
    assert notes == []
    assert parse_explore_query({"head": "scan"}) == (ExploreParams(), [])  # the model's own direction
    params, notes = parse_explore_query({"dir": "sideways", "k": "ten", "q": ["first", "last"]})
    assert params.head is None and params.k is None and params.q == "last"
    assert len(notes) == 2 and all("\n" not in n for n in notes)
    params, notes = parse_explore_query({"k": "100000", "q": "x" * 2000})
    assert params.k == 100 and params.q is None and len(notes) == 2
    assert "the limit is 1,000 characters" in notes[0]  # refused whole, never cut mid-word


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
    assert settings.head == f"scan_{model.config.head_params.get('cross_attn', 't2i')}"
    assert settings.overrides()["lambda_softmax"] == model.config.head_params.get("lambda_softmax", 9.0)
    head = HeadSettings.for_head("scan_i2t", model.config, {"agg_func": "Mean"}).build(model)
    assert head.cross_attn == "i2t" and head.attention_params.agg_func == "Mean"
    chan = HeadSettings.for_head("chan", model.config, {"beta": 0.2, "lambda_softmax": 3.0}).build(model)
    assert chan.name == "chan" and chan.settings == {"beta": 0.2, "chan_agg": "LogSumExp"}  # SCAN's left out
    with pytest.raises(ScanVizError):
        HeadSettings.for_head("scan_t2i", model.config, {"agg_func": "Median"})


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


# the fixture's model is random: at its own lambda_softmax every word's attention is flat (at most 1.9 times the even
# share); at 50 some words stand out (up to 13 times) and some fall between 2 and 3 times, so the flat rule is tested
@pytest.mark.parametrize("lsm", [None, "50"])
def test_deep_link_shows_one_panel_per_word_with_no_click(app, bundle, lsm):
    image_id = bundle.image_ids[1]
    sentence = bundle.captions[image_id][0]
    at = open_link(app, image=image_id, q=sentence, **({"lsm": lsm} if lsm else {}))
    no_exception(at)
    assert not at.error
    words = sentence.split()
    assert at.session_state[explore.PANELS_MARKER] == words
    # each panel's caption: the word, its R, and its strongest region with the weight (or the flat note)
    alignment = library_alignment(bundle, image_id, sentence, **({"lambda_softmax": float(lsm)} if lsm else {}))
    names = region_names(bundle, image_id)
    expected = [f"{word} \u00b7 R = {alignment.word_relevance[i]:.2f} \u00b7 "
                f"{where_it_looks(alignment.attention[i], names)}" for i, word in enumerate(words, start=1)]
    assert panel_images(at) == expected
    assert score(at) == f"{alignment.score:.4f}"
    assert at.query_params["image"] == image_id and at.query_params["q"] == sentence
    assert {"Panels (PNG)", "Panels (SVG)", "Alignment (JSON)"} <= {b.label for b in at.download_button}


def test_deep_link_sets_direction_word_and_k(app, bundle):
    image_id = bundle.image_ids[2]
    sentence = bundle.captions[image_id][0]
    word = sentence.split()[1]
    at = open_link(app, image=image_id, q=sentence, dir="i2t", word=word, k="5")
    no_exception(at)
    assert at.session_state[state.HEAD_KEY] == "scan_i2t"  # an old link's dir names SCAN's direction
    assert at.query_params == {"image": image_id, "q": sentence, "word": word, "k": "5", "head": "scan_i2t"}
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
    """Every control change shows the library's score for the new settings, to the 4 decimals shown."""
    image_id = bundle.image_ids[0]
    sentence = bundle.captions[image_id][0]
    at = open_link(app, image=image_id, q=sentence)
    base = library_alignment(bundle, image_id, sentence).score
    assert score(at) == f"{base:.4f}"
    assert not [i for i in at.sidebar.info if "were trained for" in i.value]  # scan_t2i: the model's own head
    at.selectbox(key=state.HEAD_KEY).set_value("scan_i2t").run()
    no_exception(at)
    flipped = library_alignment(bundle, image_id, sentence, head="scan_i2t").score
    assert score(at) == f"{flipped:.4f}" != f"{base:.4f}"
    assert at.query_params["head"] == "scan_i2t"
    at.selectbox(key=state.setting_key("agg_func")).set_value("Mean").run()
    mean = library_alignment(bundle, image_id, sentence, head="scan_i2t", agg_func="Mean").score
    assert score(at) == f"{mean:.4f}" != f"{flipped:.4f}"
    at.slider(key=state.setting_key("lambda_softmax")).set_value(2.0).run()
    no_exception(at)
    softer = library_alignment(bundle, image_id, sentence, head="scan_i2t", agg_func="Mean", lambda_softmax=2.0)
    assert score(at) == f"{softer.score:.4f}" != f"{mean:.4f}"
    assert at.query_params["agg"] == "Mean" and at.query_params["lsm"] == "2"
    # the controls are the head's own: CHAN shows beta and its pooling, not SCAN's lambdas
    at.selectbox(key=state.HEAD_KEY).set_value("chan").run()
    no_exception(at)
    # another head than the one the encoders were trained for is said so, beside the control
    assert [i.value for i in at.sidebar.info if "were trained for scan_t2i, not chan" in i.value]
    labels = {w.label for w in [*at.sidebar.slider, *at.sidebar.selectbox]}
    assert {"\u03b2", "CHAN pooling"} <= labels and "\u03bb_softmax" not in labels
    at.slider(key=state.setting_key("beta")).set_value(0.3).run()
    chan = library_alignment(bundle, image_id, sentence, head="chan", beta=0.3).score
    assert score(at) == f"{chan:.4f}" and at.query_params["head"] == "chan" and at.query_params["beta"] == "0.3"
    reset = next(b for b in at.sidebar.button if b.label.startswith("Reset"))
    reset.click().run()
    assert score(at) == f"{base:.4f}"


def test_the_score_is_shown_in_full_as_text(app, bundle):
    """The score is plain text, not an st.metric that cut "-0.2512" to "-0.25..." in a narrow column."""
    image_id = bundle.image_ids[0]
    sentence = "zyzzyva quux"
    at = open_link(app, image=image_id, q=sentence)
    assert not at.metric
    expected = library_alignment(bundle, image_id, sentence).score
    assert score(at) == f"{expected:.4f}" and len(score(at)) >= 6


def open_tab(app, bundle, tab: str, image_index: int = 4, **link: str) -> tuple[AppTest, str, str]:
    image_id = bundle.image_ids[image_index]
    sentence = bundle.captions[image_id][0]
    at = open_link(app, image=image_id, q=sentence, **link)
    at.session_state[explore.TAB_KEY] = tab
    at.run()
    no_exception(at)
    assert not at.error
    return at, image_id, sentence


def test_interactive_tab_shows_the_library_figure(app, bundle):
    from scan_viz.render import COLOUR_BAR, plotly_alignment

    at, image_id, sentence = open_tab(app, bundle, "Interactive")
    _, gallery = library(bundle.model, bundle.gallery)
    alignment = library_alignment(bundle, image_id, sentence)
    expected = plotly_alignment(gallery.load_image(image_id), alignment, word=1).to_plotly_json()
    [shown] = chart_specs(at)
    assert shown["layout"]["title"]["text"] == expected["layout"]["title"]["text"]
    boxes = [t for t in shown["data"] if t["type"] == "scatter" and t.get("name") != COLOUR_BAR]
    assert len(boxes) == len(alignment.boxes)
    # opacity follows the first word's absolute attention weights (not rescaled to its largest one)
    assert [t["fillcolor"] for t in boxes] == [t["fillcolor"] for t in expected["data"][1:1 + len(boxes)]]
    assert [b["label"] for b in shown["layout"]["updatemenus"][0]["buttons"]] == sentence.split()
    assert any(t.get("name") == COLOUR_BAR for t in shown["data"])


def test_image_to_text_tab_shows_the_regions_figure_and_table(app, bundle):
    at, image_id, sentence = open_tab(app, bundle, "Image \u2192 text", head="scan_i2t", k="5")
    alignment = library_alignment(bundle, image_id, sentence, head="scan_i2t")
    names, words = region_names(bundle, image_id), sentence.split()
    strongest = np.argsort(-alignment.region_relevance, kind="stable")[:5]  # the 5 regions of highest R
    best = [int(alignment.attention[1:-1, r].argmax()) + 1 for r in strongest]  # the word each attends to most
    expected = pd.DataFrame({"region": [f"{r}: {names[r]}" for r in strongest],
                             "relevance": [round(float(alignment.region_relevance[r]), 4) for r in strongest],
                             "most attended word": [words[w - 1] for w in best],
                             "weight": [round(float(alignment.attention[w, r]), 4) for w, r in zip(best, strongest)]})
    shown = at.dataframe[0].value
    pd.testing.assert_frame_equal(shown, expected, check_dtype=False)
    assert sum(im.proto.imgs[0].url.endswith(".png") for im in at.image) == 1  # the figure (thumbnails: JPEG)


def test_relevance_tab_shows_the_library_values(app, bundle):
    at, image_id, sentence = open_tab(app, bundle, "Relevance", lsm="50")  # flat and peaked words: see above
    alignment = library_alignment(bundle, image_id, sentence, lambda_softmax=50.0)
    names, words = region_names(bundle, image_id), sentence.split()
    tops = [int(alignment.attention[i].argmax()) for i in range(1, len(words) + 1)]
    looks = [where_it_looks(alignment.attention[i], names) for i in range(1, len(words) + 1)]
    expected = pd.DataFrame({"#": range(1, len(words) + 1), "word": words, "in vocabulary": True,
                             "relevance": [round(float(r), 4) for r in alignment.word_relevance[1:-1]],
                             "strongest region": [look if look.startswith("flat") else f"{top}: {names[top]}"
                                                  for look, top in zip(looks, tops)],
                             "weight": [round(float(alignment.attention[i, top]), 4) for i, top in enumerate(tops, 1)]})
    pd.testing.assert_frame_equal(at.dataframe[0].value, expected, check_dtype=False)
    [chart] = chart_specs(at)  # one bar per word, labelled by its place in the sentence, R as the library has it
    assert chart["data"][0]["y"] == [f"{i}: {w}" for i, w in enumerate(words, start=1)]
    assert chart["data"][0]["x"] == pytest.approx(alignment.word_relevance[1:-1].tolist(), abs=1e-12)


def test_ablation_tab_shows_the_library_values(app, bundle):
    from scan_viz.pipeline import ablate, gallery_regions

    at, image_id, sentence = open_tab(app, bundle, "Ablation")
    model, gallery = library(bundle.model, bundle.gallery)
    result = ablate(model, gallery_regions(gallery, image_id), sentence)
    words, regions = chart_specs(at)
    assert words["data"][0]["x"] == pytest.approx([d for _, d in result["words"]], abs=1e-6)
    largest = sorted(result["regions"], key=lambda rd: -abs(rd[1]))[:12]
    assert regions["data"][0]["x"] == pytest.approx([d for _, d in largest], abs=1e-6)
    token, delta = min(result["words"], key=lambda wd: wd[1])
    said = " ".join(m.value for m in at.markdown)
    if delta < 0:
        assert f"relies most on `{token}`: removing it lowers the score by {-delta:.4f}" in said
    else:
        assert "no word supports this match" in said
    assert any(f"Score {result['score']:.4f}." in c.value for c in at.caption)


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
    assert not at.info and not at.warning  # only the upload's error: no "Pick a gallery image above"
    at.file_uploader[0].set_value(("photo.png", png_bytes(), "image/png")).run()
    no_exception(at)
    assert not at.error
    # the note follows the domain check (scan_viz.regions.domain), whatever the model's config says
    assert any("Out of domain" in w.value for w in at.warning) == (at.session_state[explore.DOMAIN_MARKER] is False)
    assert at.session_state[explore.PANELS_MARKER] == ["a", "red", "car", "on", "the", "road"]
    assert "image" not in at.query_params and at.query_params["q"] == "a red car on the road"


def test_an_upload_is_marked_out_of_domain_with_the_model_cards_words(bundle, monkeypatch, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(bundle.model, model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config["extra"]["domain"] = "toy scenes of coloured shapes"
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name, value in {**bundle.env(), "SCAN_VIZ_MODEL": str(model_dir)}.items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at = open_link(at, image=bundle.image_ids[0], q="a red car")
    assert not any("Out of domain" in w.value for w in at.warning)  # a gallery image is in the model's domain
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    # a gallery scene's own image file, uploaded: in domain, no note (every upload was called out of domain)
    from scan_viz.gallery import load_gallery

    scene = load_gallery(bundle.gallery).image_path(bundle.image_ids[3])
    at.file_uploader[0].set_value((scene.name, scene.read_bytes(), "image/jpeg")).run()
    no_exception(at)
    assert at.session_state[explore.DOMAIN_MARKER] is True
    assert not any("Out of domain" in w.value for w in at.warning)
    # a photograph: its regions are unlike any gallery region
    import matplotlib.cbook

    photo = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    at.file_uploader[0].set_value(("photo.jpg", photo.read_bytes(), "image/jpeg")).run()
    no_exception(at)
    assert at.session_state[explore.DOMAIN_MARKER] is False
    [note] = [w.value for w in at.warning if "Out of domain" in w.value]
    assert "trained only on `toy scenes of coloured shapes`" in note and "carry little meaning" in note
    at.switch_page(PAGES["Model"]).run()
    shown = " ".join(str(v) for table in at.table for v in table.value.to_numpy().ravel())
    assert "toy scenes of coloured shapes" in shown  # the model card states it too


def test_bundled_models_state_their_domain():
    from scan_viz.app.bundle import model_domain
    from scan_viz.model import load_model
    from scan_viz.train.bundle import MODEL_DOMAIN

    for name in ("scan-emoji-t2i", "scan-emoji-i2t"):
        assert model_domain(load_model(name)) == MODEL_DOMAIN and "emoji" in MODEL_DOMAIN


# ----------------------------------------------------------------------------- Retrieve, Evaluate, Model


def test_search_gallery_matches_whole_words_of_one_caption():
    from scan_viz.gallery import Gallery
    from scan_viz.regions.store import RegionStore

    captions = {"test_000001": ["an elephant on the grass", "a giant red kite"],
                "test_000002": ["an ant on the sand", "a blue car"],
                "test_000003": ["Two ants and a red car."]}
    records = [{"id": i, "file": f"{i}.jpg", "captions": [{"text": c} for c in cs]} for i, cs in captions.items()]
    store = RegionStore(ids=list(captions), features=np.zeros((3, 1, 4), np.float32))
    gallery = Gallery(Path("."), "words", records, store, None)
    assert search_gallery(gallery, "ant") == ["test_000002"]  # not "elephant", "giant" or "ants"
    assert search_gallery(gallery, "  ANT ") == ["test_000002"]
    assert search_gallery(gallery, "red car") == ["test_000003"]  # both words in one caption
    assert search_gallery(gallery, "blue sand") == []  # in two captions of one image: no
    assert search_gallery(gallery, "car.") == ["test_000003"]  # tokenised like the model: "car" "."
    assert search_gallery(gallery, "000002") == search_gallery(gallery, "test_000002") == ["test_000002"]
    assert search_gallery(gallery, "") == list(captions)


def test_retrieve_image_search_without_a_hit_says_so(app, bundle):
    at = app.run()
    at.switch_page(PAGES["Retrieve"]).run()
    at.session_state["rt_tab"] = "Image \u2192 text"
    at.run()
    at.text_input(key="rt_image_search").input("zyzzyva").run()
    no_exception(at)
    assert [i.value for i in at.info] == [NO_MATCH]
    assert not [s for s in at.selectbox if s.key == "rt_image"]
    assert not [b for b in at.button if (b.key or "").startswith("rt_open_caption_")]


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
    assert sum(retrieve.TICK in m for m in marks) == 1
    assert all(m.endswith("exhaustive") for m in marks)  # the fixture model has no stage-1 head
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


def library_evaluation(bundle) -> dict:
    from scan_viz.pipeline import evaluate_gallery

    model, gallery = library(bundle.model, bundle.gallery)
    return evaluate_gallery(model, gallery, HeadSettings.from_config(model.config).build(model), details=True)


def evaluated(app) -> AppTest:
    at = app.run()
    at.switch_page(PAGES["Evaluate"]).run()
    no_exception(at)
    start = [b for b in at.button if b.label == "Evaluate on the gallery"]
    if start:  # not yet evaluated in this process (results are kept for every session)
        start[0].click().run()
        no_exception(at)
    assert at.title[0].value == "Evaluate" and any(m.label == "rsum" for m in at.metric)
    return at


def failure_table(at: AppTest, direction: str) -> tuple[list[int], list[int]]:
    """The failure list as shown: the query index behind each row's "Truth" button, and each row's rank."""
    queries = [int(b.key.rsplit("_", 1)[1]) for b in at.button if (b.key or "").startswith(f"ev_truth_{direction}_")]
    ranks = [int(m.value) for m in at.markdown if m.value.isdigit()]
    return queries, ranks


def test_evaluate_lists_failures_worst_first_with_the_library_ranks(app, bundle):
    at = evaluated(app)
    at.slider(key="ev_k").set_value(1).run()
    result = library_evaluation(bundle)
    _, gallery = library(bundle.model, bundle.gallery)
    for direction in ("t2i", "i2t"):
        if direction == "i2t":
            at.segmented_control(key="ev_dir").set_value("i2t").run()
            no_exception(at)
        ranks = np.asarray(result[f"{direction}_ranks"])
        failing = [q for q in range(len(ranks)) if ranks[q] >= 1]  # K = 1: truth not ranked first
        worst_first = sorted(failing, key=lambda q: (-ranks[q], q))
        assert at.session_state["evaluate_failures"] == len(failing) > 0
        queries, shown_ranks = failure_table(at, direction)
        assert queries == worst_first[:evaluate.PER_PAGE]
        assert shown_ranks == [int(ranks[q]) + 1 for q in queries]
        assert shown_ranks == sorted(shown_ranks, reverse=True)
        said = [m.value for m in at.markdown]
        for q in queries:
            if direction == "t2i":
                # the gallery file's captions and ids, each shown literally
                assert literal(gallery.captions[q]) in said and literal(gallery.ids[int(result['t2i_top'][q])]) in said
            else:
                assert literal(gallery.captions[int(result["i2t_best_own"][q])]) in said
                assert literal(gallery.captions[int(result["i2t_top"][q])]) in said
        assert any(f"{len(failing)} of {len(ranks)} queries fail at K = 1" in c.value for c in at.caption)
    # a failure opens its ground-truth pair in Explore
    at.segmented_control(key="ev_dir").set_value("t2i").run()
    queries, _ = failure_table(at, "t2i")
    at.button(key=f"ev_truth_t2i_{queries[0]}").click().run()
    no_exception(at)
    assert at.title[0].value == "Explore"
    assert at.query_params["q"] == gallery.captions[queries[0]]
    assert at.query_params["image"] == gallery.ids[int(gallery.caption_image[queries[0]])]


def test_evaluate_metrics_equal_the_library_and_the_cli(app, bundle, tmp_path):
    from scan_viz.cli import main

    at = evaluated(app)
    out = tmp_path / "eval.json"
    assert main(["eval", "--gallery", str(bundle.gallery), "--model", str(bundle.model), "--json", str(out)]) == 0
    cli = json.loads(out.read_text(encoding="utf-8"))
    result = library_evaluation(bundle)
    for numbers in (cli, result):
        expected = pd.DataFrame([{"direction": name, "R@1": round(m["r1"], 1), "R@5": round(m["r5"], 1),
                                  "R@10": round(m["r10"], 1), "medr": round(m["medr"], 1), "meanr": round(m["meanr"], 1)}
                                 for name, m in (("image \u2192 text", numbers["i2t"]),
                                                 ("text \u2192 image", numbers["t2i"]))])
        pd.testing.assert_frame_equal(at.dataframe[0].value, expected, check_dtype=False)
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["rsum"] == f"{numbers['rsum']:.1f}"
        assert metrics["Pointing accuracy"] == f"{numbers['pointing_accuracy']:.1f}%"
    pointing = next(d.value for d in at.dataframe if "word type" in d.value.columns)
    assert pointing["pointing accuracy %"].tolist() == [round(v, 1) for v in cli["pointing"].values()]
    assert pointing["words"].tolist() == list(cli["counts"].values())


def test_model_page_refuses_bad_paths_with_one_line(app, tmp_path, monkeypatch):
    monkeypatch.setenv("SCAN_VIZ_ALLOWED_ROOTS", str(tmp_path))
    at = app.run()
    at.switch_page(PAGES["Model"]).run()
    at.segmented_control(key="md_kind").set_value(models.SERVER).run()
    at.text_input(key="md_checkpoint").input(str(tmp_path / "missing.pth.tar"))
    at.text_input(key="md_vocab").input(str(tmp_path / "vocab.json"))
    at.text_input(key="md_regions").input(str(tmp_path / "regions"))
    at.text_input(key="md_images").input(str(tmp_path / "images"))
    at.form_submit_button[0].click().run()
    no_exception(at)
    assert len(at.error) == 1 and "Checkpoint: no such file" in at.error[0].value and "\n" not in at.error[0].value
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
def user_data(bundle, tmp_path, monkeypatch):
    """An official checkpoint + vocab of the fixture model, its regions as .npz, and an images folder."""
    from scan_viz.model import load_model
    from scan_viz.model.checkpoint import write_official_checkpoint

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
    monkeypatch.setenv("SCAN_VIZ_ALLOWED_ROOTS", str(tmp_path))  # the operator shares the folder
    return tmp_path, ids


def submit_user_data(at: AppTest, folder: Path, regions: str = "regions", images: str = "images") -> AppTest:
    at.switch_page(PAGES["Model"]).run()
    at.segmented_control(key="md_kind").set_value(models.SERVER).run()
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
    assert len(at.error) == 1 and "feature row 1" in at.error[0].value and "\n" not in at.error[0].value


def test_missing_bundled_model_is_one_line_on_every_page(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("SCAN_VIZ_MODEL", str(tmp_path / "no-model"))
    monkeypatch.setenv("SCAN_VIZ_GALLERY", str(bundle.gallery))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_exception(at)
    assert len(at.error) == 1 and "the server's model and gallery could not be loaded" in at.error[0].value
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
    # the served model is preselected (was the first name: scan-emoji-i2t sorts before it)
    assert at.selectbox(key="md_bundled_name").value == "scan-emoji-t2i"
    at.selectbox(key="md_bundled_name").set_value("scan-emoji-i2t")
    at.form_submit_button[0].click().run()
    no_exception(at)
    assert not at.error and any("Now serving `scan-emoji-i2t`" in s.value for s in at.success)
    assert at.subheader[0].value == "Serving `scan-emoji-i2t`"


# ----------------------------------------------------------------------------- Compare


def test_a_compare_link_shows_each_head_with_its_score_and_rank(app, bundle):
    """?image=..&q=..&compare=scan_t2i,chan,caan opens the heads side by side, each with the library's score
    and the image's rank among the gallery's for the sentence under that head."""
    from scan_viz.pipeline import GalleryIndex, compare_heads

    image_id = bundle.image_ids[1]
    sentence = bundle.captions[image_id][0]
    heads = ["scan_t2i", "chan", "caan"]
    at = open_link(app, image=image_id, q=sentence, compare=",".join(heads))
    no_exception(at)
    assert not at.error and at.session_state[explore.COMPARE_MARKER] == heads
    model, gallery = library(bundle.model, bundle.gallery)
    expected = compare_heads(GalleryIndex.build(model, gallery), image_id, sentence,
                             [HeadSettings.for_head(h, model.config).build(model) for h in heads])
    lines = [m.value for m in at.markdown if "**rank**" in m.value]
    assert lines == [f"{explore.SCORE_LABEL} {r.alignment.score:.4f} \u00b7 **rank** {r.rank} of {len(gallery)}"
                     for r in expected]
    assert len({line.split()[1] for line in lines}) == 3  # three heads, three scores
    assert [s.value for s in at.main.subheader][-3:] == heads
    # one picture per head, and each head's relevance chart: CAAN has word and region weights
    titles = [spec["layout"]["title"]["text"] for spec in chart_specs(at)]
    assert titles.count("R per word") == 1 and titles.count("best-region cosine per word") == 1
    assert titles.count("word weight per word") == 1 and titles.count("region weight, top 8 regions") == 1
    assert at.query_params["compare"] == ",".join(heads)
    # the sidebar's head settings apply to that head's column; the others keep the model's own
    at.selectbox(key=state.HEAD_KEY).set_value("chan").run()
    at.slider(key=state.setting_key("beta")).set_value(0.5).run()
    no_exception(at)
    chan = library_alignment(bundle, image_id, sentence, head="chan", beta=0.5).score
    lines = [m.value for m in at.markdown if "**rank**" in m.value]
    assert lines[0] == f"{explore.SCORE_LABEL} {expected[0].alignment.score:.4f} \u00b7 **rank** {expected[0].rank} of " \
                       f"{len(gallery)}"
    assert lines[1].startswith(f"{explore.SCORE_LABEL} {chan:.4f} ")
