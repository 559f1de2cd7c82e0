"""The Learn page with AppTest on the fixture bundle: a deep link opens its step with its settings, moving
lambda_softmax shows the library's alpha for the new value, predict-then-reveal keeps the tally."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streamlit.testing.v1 import AppTest
from test_app import no_exception

from scan_viz.app import learn as page
from scan_viz.app.params import parse_explore_query
from test_app import app, bundle, no_exception  # noqa: F401  (fixtures: the fixture bundle served by app.py)

LEARN = "scan_viz/app/learn.py"


def library_steps(bundle, image_id, sentence, head="scan_t2i", **settings):
    from scan_viz.gallery import load_gallery
    from scan_viz.heads.walk import steps
    from scan_viz.model import load_model
    from scan_viz.pipeline import gallery_regions

    model, gallery = load_model(bundle.model), load_gallery(bundle.gallery)
    return steps(model, gallery_regions(gallery, image_id), sentence, head=head, **settings)


def open_learn(at: AppTest, **query: str) -> AppTest:
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(LEARN)
    return at.run()


def shown_alpha(at: AppTest) -> np.ndarray:
    """The alpha table the page shows (its 'numbers' expander), words x regions."""
    return np.asarray(at.dataframe[0].value, dtype=np.float64)


def test_the_link_keys_parse():
    params, notes = parse_explore_query({"step": "4", "view": "present", "image": "x"})
    assert params.step == 4 and params.view == "present" and not notes
    params, notes = parse_explore_query({"step": "four", "view": "<b>"})
    assert params.step is None and params.view is None and len(notes) == 2


def test_a_deep_link_opens_its_step_with_its_settings(app, bundle):
    image_id = bundle.image_ids[1]
    sentence = bundle.captions[image_id][0]
    at = open_learn(app, image=image_id, q=sentence, head="scan_t2i", step="5", lsm="4.5", agg="Mean")
    no_exception(at)
    shown = at.session_state[page.SHOWN_KEY]
    assert shown["step"] == "relevance"  # the 5th of SCAN's steps
    assert shown["settings"]["lambda_softmax"] == 4.5 and shown["settings"]["agg_func"] == "Mean"
    assert at.slider(key=page.control_key("lambda_softmax")).value == 4.5
    assert at.selectbox(key=page.IMAGE_KEY).value == image_id
    assert at.text_input(key=page.Q_KEY).value == sentence
    expected = library_steps(bundle, image_id, sentence, lambda_softmax=4.5, agg_func="Mean")
    np.testing.assert_allclose(shown["value"], expected.step("relevance").value, rtol=0, atol=1e-12)
    assert at.subheader[0].value.startswith("5. Relevance")
    assert at.query_params["step"] in ("5", ["5"]) and at.query_params["lsm"] in ("4.5", ["4.5"])


def test_moving_lambda_softmax_shows_the_librarys_alpha(app, bundle):
    image_id = bundle.image_ids[2]
    sentence = bundle.captions[image_id][0]
    app.session_state[page.PREDICT_KEY] = False
    at = open_learn(app, image=image_id, q=sentence, head="scan_t2i", step="3")
    no_exception(at)
    assert at.session_state[page.SHOWN_KEY]["step"] == "attention"
    before = shown_alpha(at)
    np.testing.assert_allclose(before, library_steps(bundle, image_id, sentence).step("attention").value,
                               rtol=0, atol=1e-12)
    at.slider(key=page.control_key("lambda_softmax")).set_value(30.0).run()
    no_exception(at)
    after = shown_alpha(at)
    expected = library_steps(bundle, image_id, sentence, lambda_softmax=30.0).step("attention").value
    np.testing.assert_allclose(after, expected, rtol=0, atol=1e-12)
    assert np.abs(after - before).max() > 1e-3
    # the sidebar and the link follow
    assert at.session_state["ctl_lambda_softmax"] == 30.0
    # the ends of the range stay finite
    for end in (0.5, 50.0):
        at.slider(key=page.control_key("lambda_softmax")).set_value(end).run()
        assert np.all(np.isfinite(shown_alpha(at)))


def test_predict_then_reveal_counts_right_and_wrong(app, bundle):
    image_id = bundle.image_ids[0]
    sentence = bundle.captions[image_id][0]
    at = open_learn(app, image=image_id, q=sentence, head="scan_t2i", step="3")
    no_exception(at)
    assert at.session_state[page.SHOWN_KEY]["shown"] is False  # hidden until predicted
    word = at.session_state[page.SHOWN_KEY]["word"]
    alpha = library_steps(bundle, image_id, sentence).step("attention").value[word]
    labels = at.pills(key=page.GUESS_KEY).options
    right, wrong = labels[int(np.argmax(alpha))], labels[int(np.argmin(alpha))]
    at.pills(key=page.GUESS_KEY).set_value(wrong).run()
    no_exception(at)
    assert at.session_state[page.TALLY_KEY] == {"right": 0, "wrong": 1}
    assert at.session_state[page.SHOWN_KEY]["shown"] is True
    assert any("Not quite" in w.value for w in at.warning)
    # the next word asks again; a right guess counts as right
    words = at.pills(key=page.WORD_KEY).options
    at.pills(key=page.WORD_KEY).set_value(words[word + 1]).run()
    assert at.session_state[page.SHOWN_KEY]["shown"] is False
    alpha = library_steps(bundle, image_id, sentence).step("attention").value[word + 1]
    at.pills(key=page.GUESS_KEY).set_value(labels[int(np.argmax(alpha))]).run()
    assert at.session_state[page.TALLY_KEY] == {"right": 1, "wrong": 1}
    assert any("Right" in s.value for s in at.success)
    # the teacher's toggle turns the prompts off
    at.toggle(key=page.PREDICT_KEY).set_value(False).run()
    at.pills(key=page.WORD_KEY).set_value(words[word + 2]).run()
    assert at.session_state[page.SHOWN_KEY]["shown"] is True


def test_next_and_previous_move_one_step(app, bundle):
    image_id = bundle.image_ids[0]
    at = open_learn(app, image=image_id, q=bundle.captions[image_id][0], head="chan", step="1")
    no_exception(at)
    assert at.session_state[page.SHOWN_KEY]["step"] == "cosines"
    at.button(key="ln_next").click().run()
    assert at.session_state[page.SHOWN_KEY]["step"] == "best"
    at.button(key="ln_prev").click().run()
    assert at.session_state[page.SHOWN_KEY]["step"] == "cosines"


def test_two_at_once_sets_a_false_caption_and_another_head_beside(app, bundle):
    from scan_viz.evaluation.truth import caption_holds
    from scan_viz.gallery import load_gallery

    image_id = bundle.image_ids[0]
    sentence = bundle.captions[image_id][0]
    app.session_state[page.PREDICT_KEY] = False
    at = open_learn(app, image=image_id, q=sentence, head="scan_t2i", step="6")
    at.radio(key=page.TWO_KEY).set_value(page.TWO_MODES[1]).run()
    no_exception(at)
    own, other = at.session_state["ln_two_scores"]
    gallery = load_gallery(bundle.gallery)
    texts = [t.value for t in at.text]
    false = next(t for t in texts if t in gallery.captions and t != sentence)
    claims = gallery.claims_of(false)
    assert claims is not None and not caption_holds(claims, gallery.scenes[gallery.index_of(image_id)]).holds
    assert other == pytest.approx(library_steps(bundle, image_id, false).score, abs=1e-12)
    at.radio(key=page.TWO_KEY).set_value(page.TWO_MODES[2]).run()
    no_exception(at)
    assert any("under chan" in c.value for c in at.caption)


def test_the_handout_is_offered_for_the_view_it_was_built_for(app, bundle):
    image_id = bundle.image_ids[0]
    app.session_state[page.PREDICT_KEY] = False
    at = open_learn(app, image=image_id, q=bundle.captions[image_id][0], head="scan_t2i", step="1")
    assert len(at.get("download_button")) == 0
    next(b for b in at.button if b.label.startswith("Build a handout")).click().run()
    no_exception(at)
    assert len(at.get("download_button")) == 1
    html = at.session_state[page.HANDOUT_KEY][1]
    assert html.startswith("<!DOCTYPE html>") and "plotly.js v" in html
    at.slider(key=page.control_key("lambda_softmax")).set_value(20.0).run()
    assert len(at.get("download_button")) == 0  # built for lambda_softmax 9, not 20


@pytest.fixture
def fixture_reranker(bundle, tmp_path, monkeypatch):
    """A co-attention re-ranker (random weights) saved for the fixture model's encoders, found by the app's own
    lookup (by fingerprint) in a folder of its own instead of pretrained/."""
    import torch

    import scan_viz.heads.coattention_net as coattention
    from scan_viz.model import load_model
    from scan_viz.parts import model_fingerprint

    model = load_model(bundle.model)
    torch.manual_seed(3)
    net = coattention.CoAttention(model.config.embed_size, 16)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0.0, 0.5)
    coattention.CoAttentionReranker(net, "app fixture", model_fingerprint(model), "random").save(
        tmp_path / "fixture-coattention")
    original = coattention.find_coattention
    monkeypatch.setattr(coattention, "find_coattention",
                        lambda m, search_dirs=None: original(m, [tmp_path / "fixture-coattention"]))
    return net


def test_a_deep_link_opens_the_coattention_heads_steps(app, bundle, fixture_reranker):
    from scan_viz.heads import selectable_heads

    assert "coattention" in selectable_heads()  # the page offers it
    image_id = bundle.image_ids[1]
    sentence = bundle.captions[image_id][0]
    at = open_learn(app, image=image_id, q=sentence, head="coattention", step="2")
    no_exception(at)
    assert not at.warning and not at.error
    shown = at.session_state[page.SHOWN_KEY]
    assert shown["step"] == "spatial" and at.subheader[0].value.startswith("2. Spatial attention")
    if not shown["shown"]:  # predict first: skip to the answer
        next(b for b in at.button if b.label.startswith("Skip")).click().run()
        shown = at.session_state[page.SHOWN_KEY]
    expected = library_steps(bundle, image_id, sentence, head="coattention")
    np.testing.assert_allclose(shown["value"], expected.step("spatial").value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(shown_alpha(at), expected.step("spatial").value, rtol=0, atol=1e-12)
    # the last step is the head's score
    at.button(key="ln_next").click().run()
    at.button(key="ln_next").click().run()
    at.button(key="ln_next").click().run()
    at.button(key="ln_next").click().run()
    no_exception(at)
    assert at.session_state[page.SHOWN_KEY]["step"] == "score"
    assert float(at.session_state[page.SHOWN_KEY]["value"]) == pytest.approx(expected.score, abs=1e-12)


def test_an_upload_made_in_explore_opens_its_steps_on_learn(app, bundle):
    """The upload Explore holds is the Learn page's "your upload": its steps open, the last equals
    scan_viz.steps on the same detected regions; the gallery-only part says so in one line; the link has no image."""
    from app_fixture import png_bytes
    from scan_viz.app import explore
    from scan_viz.app.uploads import read_upload
    from scan_viz.heads.walk import steps
    from scan_viz.model import load_model
    from scan_viz.pipeline import detect, detector_for

    data, sentence = png_bytes(), "a red car on the road"
    at = app.run()
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    at.file_uploader[0].set_value(("photo.png", data, "image/png")).run()
    no_exception(at)
    assert at.session_state[explore.UPLOAD_KEY][0] == "photo.png"
    at.session_state[page.PREDICT_KEY] = False
    at.switch_page(LEARN)
    at.run()
    no_exception(at)
    at.segmented_control(key=page.SOURCE_KEY).set_value(page.UPLOAD).run()
    at.text_input(key=page.Q_KEY).input(sentence).run()
    no_exception(at)
    assert not at.error
    assert any("photo.png" in c.value for c in at.caption)
    assert any(c.value == page.NOT_IN_LINK for c in at.caption)
    model = load_model(bundle.model)
    regions = detect(detector_for(model, bundle.detector), read_upload(data, "photo.png"))
    expected = steps(model, regions, sentence, head="scan_t2i")
    for _ in range(len(expected.steps) - 1):
        at.button(key="ln_next").click().run()
    no_exception(at)
    shown = at.session_state[page.SHOWN_KEY]
    assert shown["step"] == expected.steps[-1].key
    assert float(shown["value"]) == pytest.approx(expected.score, abs=1e-12)
    assert "image" not in at.query_params and at.query_params["q"] in (sentence, [sentence])
    # the best false caption needs a gallery image: one line says so; a typed caption still works
    at.radio(key=page.TWO_KEY).set_value(page.TWO_MODES[1]).run()
    no_exception(at)
    assert [i.value for i in at.info if "gallery image" in i.value] == [page.NEEDS_GALLERY]
    assert "\n" not in page.NEEDS_GALLERY and "\n" not in page.NOT_IN_LINK
    at.text_input(key=page.OTHER_Q_KEY).input("a blue cube").run()
    no_exception(at)
    typed = steps(model, regions, "a blue cube", head="scan_t2i")
    assert at.session_state["ln_two_scores"][1] == pytest.approx(typed.score, abs=1e-12)
    # the handout is built from the upload's walk and pixels
    next(b for b in at.button if b.label.startswith("Build a handout")).click().run()
    no_exception(at)
    assert len(at.get("download_button")) == 1
    assert at.session_state[page.HANDOUT_KEY][0][0].startswith("upload:")
    # back to the gallery: the link carries the image again
    at.segmented_control(key=page.SOURCE_KEY).set_value(page.GALLERY).run()
    no_exception(at)
    assert at.query_params["image"] in (bundle.image_ids[0], [bundle.image_ids[0]])


def test_an_unexpected_error_inside_the_learn_fragment_is_one_line(app, bundle, monkeypatch, caplog):
    """The Learn panel is an st.fragment, where Streamlit draws its own exception box before the page's handler
    sees the error: the fragment has the same last resort (one line, the trace in the server's log)."""
    import logging

    from scan_viz.app.safe_text import literal

    def broken(*args, **kwargs):
        raise KeyError("/srv/secret/path: an error nobody foresaw")

    import scan_viz.render.learn

    monkeypatch.setattr(scan_viz.render.learn, "step_figure", broken)  # the page module is re-run; its imports are not
    image_id = bundle.image_ids[0]
    with caplog.at_level(logging.ERROR, logger="scan_viz.app.frame"):
        at = open_learn(app, image=image_id, q=bundle.captions[image_id][0], step="2")
    no_exception(at)
    assert literal("this page stopped: an unexpected error; the server's log has the details. Reload the page, or "
                   "choose another model on the Model page") in [e.value for e in at.error]
    assert "/srv/secret/path" in caplog.text
