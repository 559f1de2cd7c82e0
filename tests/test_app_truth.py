"""The truth check where users judge results: Retrieve's marks and reasons, Evaluate's truth-aware recall,
mistake breakdown and failure filter, and galleries without claims. AppTest on the fixture bundle."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from scan_viz.app.bundle import ground_truth_images
from scan_viz.app.evaluate import PER_PAGE
from scan_viz.app.retrieve import ALSO_TRUE, CROSS, TICK
from scan_viz.evaluation.truth import caption_holds
from scan_viz.gallery import load_gallery
from scan_viz.model import load_model
from scan_viz.pipeline import evaluate_gallery

torch.set_num_threads(1)

APP = str(Path(__file__).resolve().parents[1] / "app.py")
RETRIEVE, EVALUATE = "scan_viz/app/retrieve.py", "scan_viz/app/evaluate.py"
TIMEOUT = 120


@pytest.fixture(scope="module")
def gallery(bundle):
    return load_gallery(bundle.gallery)


def _app(monkeypatch, env: dict[str, str]) -> AppTest:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def evaluated(at: AppTest) -> AppTest:
    """The Evaluate page with results (evaluations are kept for every session of the process: maybe already run)."""
    at.switch_page(EVALUATE).run()
    start = [b for b in at.button if b.label == "Evaluate on the gallery"]
    if start:
        start[0].click().run()
    no_exception(at)
    assert any(m.label == "rsum" for m in at.metric)
    return at


def expected_marks(gallery, caption: int, image_ids: list[str]) -> list[str]:
    own = gallery.ids[int(gallery.caption_image[caption])]
    return [TICK if i == own else ALSO_TRUE if gallery.truth[caption, gallery.index_of(i)] else CROSS
            for i in image_ids]


def test_retrieve_marks_own_also_true_and_false_results_with_reasons(bundle, gallery, monkeypatch):
    # a caption that is true of another image too (the fixture world has a few)
    caption = next(k for k in range(len(gallery.captions)) if gallery.truth[k].sum() > 1
                   and len(ground_truth_images(gallery, gallery.captions[k])) == 1)
    at = _app(monkeypatch, bundle.env()).run()
    at.switch_page(RETRIEVE).run()
    at.slider(key="rt_k").set_value(len(gallery)).run()
    at.text_input(key="rt_q").input(gallery.captions[caption]).run()
    no_exception(at)
    results, marks = at.session_state["retrieve_results"], at.session_state["retrieve_marks"]
    assert marks == expected_marks(gallery, caption, results)
    assert marks.count(TICK) == 1 and marks.count(ALSO_TRUE) >= 1 and marks.count(CROSS) >= 1
    shown = [t.value for t in at.text]
    for image_id, mark in zip(results, marks):
        verdict = caption_holds(gallery.caption_claims[caption], gallery.scenes[gallery.index_of(image_id)])
        if mark == CROSS:
            assert "\n".join(verdict.reasons) in shown  # what is wrong with this image, in plain text
    assert len(shown) == marks.count(CROSS)
    assert any("also true" in c.value and f"true of {len(results) - marks.count(CROSS)} of the top" in c.value
               for c in at.caption)


def test_retrieve_typed_sentence_has_no_claims_and_says_so(bundle, monkeypatch):
    at = _app(monkeypatch, bundle.env()).run()
    at.switch_page(RETRIEVE).run()
    at.text_input(key="rt_q").input("a purple giraffe flying over the snow").run()
    no_exception(at)
    assert set(at.session_state["retrieve_marks"]) == {""}
    assert any("typed sentence carries no claims" in c.value for c in at.caption)


def test_retrieve_image_to_text_marks_each_caption(bundle, gallery, monkeypatch):
    image_id = gallery.ids[0]
    at = _app(monkeypatch, bundle.env()).run()
    at.switch_page(RETRIEVE).run()
    at.slider(key="rt_k").set_value(len(gallery)).run()  # the slider's largest K
    at.session_state["rt_tab"] = "Image \u2192 text"
    at.run()
    at.selectbox(key="rt_image").set_value(image_id).run()
    no_exception(at)
    captions = [int(b.key.rsplit("_", 1)[1]) for b in at.button if (b.key or "").startswith("rt_open_caption_")]
    own = set(gallery.caption_indices_of(image_id).tolist())
    want = [TICK if c in own else ALSO_TRUE if gallery.truth[c, 0] else CROSS for c in captions]
    assert len(captions) == len(gallery) and at.session_state["retrieve_marks"] == want


def test_evaluate_shows_truth_aware_recall_breakdown_and_filters_failures(bundle, gallery, monkeypatch):
    at = evaluated(_app(monkeypatch, bundle.env()).run())
    model = load_model(str(bundle.model))
    want = evaluate_gallery(model, gallery, details=True)
    rsum = next(m for m in at.metric if m.label == "Truth-aware rsum")
    assert rsum.value == f"{want['truth']['rsum']:.1f}"
    breakdown = next(d.value for d in at.dataframe if "% of mistakes" in d.value.columns)
    assert dict(zip(breakdown["attribute"], breakdown["% of mistakes"])) == pytest.approx(
        {a: round(p, 1) for a, p in want["truth"]["t2i_mistakes"]["attributes"].items()})
    at.slider(key="ev_k").set_value(1).run()
    n_all = at.session_state["evaluate_failures"]
    assert n_all == int(np.count_nonzero(want["t2i_ranks"] >= 1))
    counted = 0
    for attribute in ("count", "category", "also true"):
        at.selectbox(key="ev_wrong").set_value(attribute).run()
        no_exception(at)
        expected = [q for q in np.flatnonzero(want["t2i_ranks"] >= 1)
                    if (caption_holds(gallery.caption_claims[q], gallery.scenes[int(want["t2i_top"][q])]).holds
                        if attribute == "also true" else attribute in caption_holds(
                            gallery.caption_claims[q], gallery.scenes[int(want["t2i_top"][q])]).attributes)]
        assert at.session_state["evaluate_failures"] == len(expected)
        labels = [c.value for c in at.caption if c.value.startswith(("wrong on", "nothing wrong"))]
        assert len(labels) == min(len(expected), PER_PAGE)  # one under each listed failure on the page
        if attribute == "also true":  # a top 1 the caption is true of is not "wrong on" anything
            assert all(label.startswith("nothing wrong") for label in labels)
        else:
            assert all(label.startswith("wrong on: ") and attribute in label for label in labels)
        counted += len(expected)
    assert counted > 0
    at.selectbox(key="ev_wrong").set_value("also true").run()
    at.toggle(key="ev_any_true").set_value(True).run()
    assert at.session_state["evaluate_failures"] == 0  # a top 1 that is true is no failure when truth counts
    at.selectbox(key="ev_wrong").set_value("any").run()
    assert at.session_state["evaluate_failures"] == int(np.count_nonzero(want["t2i_truth_ranks"] >= 1))
    top = next(b for b in at.button if (b.key or "").startswith("ev_top_t2i_"))
    q = int(top.key.rsplit("_", 1)[1])
    top.click().run()
    no_exception(at)
    assert at.title[0].value == "Explore"
    assert at.query_params["image"] == gallery.ids[int(want["t2i_top"][q])]
    assert at.query_params["q"] == gallery.captions[q]


@pytest.fixture(scope="module")
def gallery_without_claims(bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("no_claims") / "gallery"
    shutil.copytree(bundle.gallery, root)
    meta = json.loads((root / "gallery.json").read_text())
    for record in meta["images"]:
        for caption in record["captions"]:
            caption.pop("claims")
    (root / "gallery.json").write_text(json.dumps(meta))
    return root


def test_a_gallery_without_claims_still_works_and_says_what_is_missing(bundle, gallery_without_claims,
                                                                        monkeypatch):
    gallery = load_gallery(gallery_without_claims)
    assert gallery.truth is None
    result = evaluate_gallery(load_model(str(bundle.model)), gallery, details=True)
    assert "truth" not in result and "annotate" in result["truth_note"] and "t2i_top_verdict" not in result

    at = _app(monkeypatch, {**bundle.env(), "SCAN_VIZ_GALLERY": str(gallery_without_claims)}).run()
    at.switch_page(RETRIEVE).run()
    at.text_input(key="rt_q").input(gallery.captions[0]).run()
    no_exception(at)
    assert set(at.session_state["retrieve_marks"]) <= {TICK, CROSS}
    assert any("carry no claims" in c.value for c in at.caption)
    evaluated(at)
    assert any("Truth-aware recall: not measured" in i.value for i in at.info)
    assert not any(m.label == "Truth-aware rsum" for m in at.metric)
    at.slider(key="ev_k").set_value(1).run()
    no_exception(at)
    assert at.session_state["evaluate_failures"] > 0


def test_truth_marks_are_drawn_by_a_plain_text_font():
    """Every character of the marks and their legend has a glyph in DejaVu Sans (Debian's Chromium has no emoji
    font, where the emoji marks for own and false were the same empty box)."""
    import os

    import matplotlib
    from matplotlib import ft2font

    from scan_viz.app.retrieve import LEGEND

    font = ft2font.FT2Font(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))
    for text in (TICK, ALSO_TRUE, CROSS, LEGEND):
        missing = {c for c in text if font.get_char_index(ord(c)) == 0}
        assert not missing, (text, missing)
    assert len({TICK, ALSO_TRUE, CROSS}) == 3


def test_failure_label_never_says_a_true_top_1_is_wrong():
    from scan_viz.app.evaluate import wrong_label
    from scan_viz.evaluation.truth import Failure, Verdict

    assert wrong_label(Verdict()) == "nothing wrong: the caption is also true of it"
    wrong = Verdict((Failure("count", "the caption says two butterflies, the image has one"),))
    assert wrong_label(wrong) == "wrong on: count"


def test_explore_shows_the_rank_and_the_truth_verdict_for_any_gallery_caption(bundle, gallery, monkeypatch):
    """A pair opened from Retrieve or Evaluate keeps its verdict in Explore: own caption, another image's caption
    true of this one, or false with what is wrong; the score comes with the image's rank for the sentence."""
    from scan_viz.app import explore
    from scan_viz.pipeline import GalleryIndex, gallery_rank

    model = load_model(str(bundle.model))
    index = GalleryIndex.build(model, gallery)
    caption = next(k for k in range(len(gallery.captions)) if gallery.truth[k].sum() > 1
                   and len(ground_truth_images(gallery, gallery.captions[k])) == 1)
    own = int(gallery.caption_image[caption])
    also_true = next(i for i in np.flatnonzero(gallery.truth[caption]) if i != own)
    false = int(np.flatnonzero(~gallery.truth[caption])[0])
    for image, expected in ((own, "own"), (int(also_true), "true"), (false, "false")):
        at = _app(monkeypatch, bundle.env())
        at.query_params["image"] = gallery.ids[image]
        at.query_params["q"] = gallery.captions[caption]
        at.run()
        no_exception(at)
        assert at.session_state[explore.VERDICT_MARKER] == expected
        scores = index.image_scores(gallery.captions[caption])
        rank = gallery_rank(scores, scores[image])
        assert at.session_state[explore.RANK_MARKER] == rank
        assert any(f"rank {rank:,} of the gallery's {len(gallery):,} images" in m.value for m in at.markdown)
        if expected == "false":
            verdict = caption_holds(gallery.caption_claims[caption], gallery.scenes[image])
            assert any("false of this one" in w.value for w in at.warning)
            assert "\n".join(verdict.reasons) in [t.value for t in at.text]


def test_retrieve_keeps_its_query_in_the_link(bundle, gallery, monkeypatch):
    """A Retrieve link reopens the same view: search=image&image=..&k=.. opens image -> text on that image with
    K results; typing a sentence writes q (and k) into the URL. dir stays SCAN's direction (the head)."""
    from scan_viz.app import retrieve

    image_id = gallery.ids[3]
    at = _app(monkeypatch, bundle.env()).run()
    at.switch_page(RETRIEVE)
    at.query_params.update({"search": "image", "image": image_id, "k": "4"})
    at.run()
    no_exception(at)
    assert at.session_state[retrieve.TAB_KEY] == retrieve.TABS["image"]
    assert at.selectbox(key=retrieve.IMAGE_KEY).value == image_id and at.slider(key=retrieve.K_KEY).value == 4
    assert len(at.session_state["retrieve_marks"]) == 4
    assert at.query_params["search"] == "image" and at.query_params["image"] == image_id
    at = _app(monkeypatch, bundle.env()).run()
    at.switch_page(RETRIEVE).run()
    at.text_input(key=retrieve.QUERY_KEY).input(gallery.captions[0]).run()
    at.slider(key=retrieve.K_KEY).set_value(7).run()
    no_exception(at)
    assert at.query_params["q"] == gallery.captions[0] and at.query_params["k"] == "7"
    assert "search" not in at.query_params
