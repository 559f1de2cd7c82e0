"""The app with visitors' input: links and typed text shown literally, bounded work, full state in the URL, and
the same score in the app, its JSON download and ``scan-viz explain``.

``streamlit.testing.v1.AppTest`` on the fixture bundle (tests/app_fixture.py); the browser-level check (no
request leaves the server, no link to the payloads' site in the page) is in tests/browser/test_browser.py.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
import tomllib
from pathlib import Path

import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from test_app import APP, PAGES, TIMEOUT, no_exception, open_link, panel_images, score

from app_fixture import INJECTION_PAYLOADS as PAYLOADS
from app_fixture import png_bytes
from scan_viz.app import explore, models, state, user_files
from scan_viz.app.params import HeadSettings
from scan_viz.app.safe_text import literal
from test_app import APP, PAGES, TIMEOUT, app, bundle, no_exception, open_link, panel_images, score  # noqa: F401

#: Link keys whose bad value is a note naming the key (``image`` is an error, ``q`` and ``word`` need a pair).
NOTED_KEYS = ("k", "model", "head", "dir", "agg", "lsm", "lse", "norm")
BOUND_S = 5.0


# ----------------------------------------------------------------------------- what the page renders as Markdown


def outside_code_spans(markdown: str) -> str:
    """``markdown`` without its code spans (CommonMark: a run of n backticks up to the next run of exactly n)."""
    out, i = [], 0
    while i < len(markdown):
        if markdown[i] != "`":
            out.append(markdown[i])
            i += 1
            continue
        n = len(re.match(r"`+", markdown[i:]).group())
        closing = re.compile(rf"(?<!`)`{{{n}}}(?!`)").search(markdown, i + n)
        if closing is None:  # an unmatched run is literal backticks
            out.append(markdown[i:i + n])
            i += n
        else:
            i = closing.end()
    return "".join(out)


def markdown_shown(at: AppTest) -> list[str]:
    """Every string the app hands Streamlit to render as Markdown: alerts, text, captions, labels, options."""
    texts = [e.value for kind in ("markdown", "caption", "warning", "error", "info", "success") for e in at.get(kind)]
    texts += [e.label for e in at.expander] + [e.label for e in at.status] + [b.label for b in at.button]
    texts += [c for image in at.image for c in image.captions]
    texts += [m.label for m in at.metric] + [m.help or "" for m in at.metric]
    texts += [o for group in (*at.pills, *at.segmented_control) for o in group.options]
    return texts


def assert_nothing_renders_as_a_link(at: AppTest) -> None:
    for text in markdown_shown(at):
        bare = outside_code_spans(text).lower()
        for marker in ("](", "<a ", "<img", "<script", "http://", "https://", "www.", "javascript:"):
            assert marker not in bare, f"{marker!r} would render in: {text!r}"


def test_literal_shows_any_text_as_one_code_span():
    assert literal("a *b*") == "`a *b*`"
    assert literal("x ``y`` z") == "```x ``y`` z```"
    assert literal("`edge`") == "`` `edge` ``"
    assert literal("two\nlines") == "`two lines`"
    assert literal("") == "` `"
    for payload in [*PAYLOADS, "`[x](https://evil.example)`"]:
        assert outside_code_spans(literal(payload)) == ""


# ----------------------------------------------------------------------------- injection through links


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_link_key_echoes_its_value_literally(app, bundle, payload):
    at = open_link(app, image=payload, **{key: payload for key in NOTED_KEYS})
    no_exception(at)
    notes = [w.value for w in at.warning]
    for key in NOTED_KEYS:
        mine = [n for n in notes if n.startswith(f"`the link's {key}")]
        assert len(mine) == 1 and payload in mine[0], (key, notes)
    assert len(at.error) == 1 and payload in at.error[0].value and at.error[0].value.startswith("`no image")
    # the unknown id is dropped before the gallery picker is drawn: the picker opens, naming no image
    assert [e.label for e in at.expander] == ["Gallery images"] and at.button(key=f"pick_{bundle.image_ids[0]}")
    assert_nothing_renders_as_a_link(at)
    assert at.session_state[state.HEAD_KEY] == "scan_t2i"
    assert at.session_state[state.setting_key("lambda_softmax")] == 9.0


@pytest.mark.parametrize("payload", PAYLOADS)
def test_sentence_and_word_from_a_link_show_literally(app, bundle, payload):
    image_id = bundle.image_ids[0]
    at = open_link(app, image=image_id, q=payload, word=payload)
    no_exception(at)
    assert at.text_input(key=explore.Q_KEY).value == payload  # a text input is plain text
    assert any(payload.lower() in w.value and "is not in the sentence" in w.value for w in at.warning)
    assert len(panel_images(at)) == len(at.session_state[explore.PANELS_MARKER]) > 0
    at.session_state[explore.TAB_KEY] = "Ablation"
    at.run()
    no_exception(at)
    assert any("relies most on `" in m.value or "raises the score" in m.value for m in at.markdown)
    assert_nothing_renders_as_a_link(at)


def test_an_upload_name_is_shown_literally(app):
    at = app.run()
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    name = "[x](javascript:alert(1)).png"
    at.file_uploader[0].set_value((name, b"\x89PNG\r\n\x1a\nnot really", "image/png")).run()
    no_exception(at)
    assert len(at.error) == 1 and name in at.error[0].value
    assert_nothing_renders_as_a_link(at)


# ----------------------------------------------------------------------------- bounded work


def test_a_6000_word_sentence_is_refused_fast(app, bundle):
    image_id = bundle.image_ids[0]
    at = open_link(app, image=image_id, q="a red car")
    assert len(panel_images(at)) == 3
    at.text_input(key=explore.Q_KEY).input(" ".join(["car"] * 6000))
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    no_exception(at)
    assert len(at.error) == 1
    assert "the sentence is 23,999 characters long; the limit is 1,000 characters (64 words)" in at.error[0].value
    assert explore.PANELS_MARKER not in at.session_state and "q" not in at.query_params
    assert elapsed < BOUND_S, f"took {elapsed:.2f} s"
    at.text_input(key=explore.Q_KEY).input(" ".join(["car"] * 70)).run()
    assert "the sentence has 70 words; the limit is 64 words" in at.error[0].value
    # the same limit on the Retrieve page
    at.switch_page(PAGES["Retrieve"]).run()
    at.text_input(key="rt_q").input(" ".join(["car"] * 70)).run()
    no_exception(at)
    assert len(at.error) == 1 and "the limit is 64 words" in at.error[0].value


def test_a_long_sentence_in_a_link_is_refused_whole(app, bundle):
    at = open_link(app, image=bundle.image_ids[0], q="a red car " * 200)
    no_exception(at)
    assert any("the link's sentence is not used: the sentence is 1,999 characters long" in w.value for w in at.warning)
    assert at.text_input(key=explore.Q_KEY).value == ""  # never cut mid-word into a different sentence


def test_a_50_megapixel_upload_is_refused_fast(app):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8660, 5774), (200, 30, 30)).save(buffer, format="PNG")
    at = app.run()
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    at.text_input(key=explore.Q_KEY).input("a red car").run()
    at.file_uploader[0].set_value(("big.png", buffer.getvalue(), "image/png"))
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    no_exception(at)
    assert len(at.error) == 1
    assert "big.png: image is 8660x5774 = 50 megapixels; the limit is 25 megapixels" in at.error[0].value
    assert elapsed < BOUND_S, f"took {elapsed:.2f} s"


def test_the_server_refuses_uploads_over_the_largest_cap_any_uploader_allows(app):
    """An uploader's cap is checked by the browser only; the server refuses any body over server.maxUploadSize.
    That must be the largest cap an uploader offers: larger lets a client skip the browser's check, smaller
    refuses a file the page allows."""
    config = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    at = app.run()
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    caps = [uploader.proto.max_upload_size_mb for uploader in at.file_uploader]
    at.switch_page(PAGES["Model"]).run()
    at.segmented_control(key=models.KIND_KEY).set_value(models.UPLOAD).run()
    caps += [uploader.proto.max_upload_size_mb for uploader in at.file_uploader]
    no_exception(at)
    assert len(caps) == 5 and min(caps) > 0  # the photo; checkpoint, vocabulary, regions, images
    assert config["server"]["maxUploadSize"] == max(caps) == user_files.MAX_REGIONS_MB


@pytest.mark.parametrize("lsm,lse", [("nan", "-1"), ("1e9", "inf"), ("0", "51")])
def test_unusable_lambdas_in_a_link_keep_the_models_settings(app, bundle, lsm, lse):
    image_id = bundle.image_ids[1]
    sentence = bundle.captions[image_id][0]
    base = score(open_link(AppTest.from_file(APP, default_timeout=TIMEOUT), image=image_id, q=sentence))
    start = time.perf_counter()
    at = open_link(app, image=image_id, q=sentence, lsm=lsm, lse=lse)
    assert time.perf_counter() - start < BOUND_S
    no_exception(at)
    notes = " ".join(w.value for w in at.warning)
    assert f"the link's lsm={lsm!r} is not used: lambda_softmax must be a number from 0.5 to 50" in notes
    assert f"the link's lse={lse!r} is not used: lambda_lse must be a number from 0.5 to 50" in notes
    assert at.session_state[state.setting_key("lambda_softmax")] == 9.0
    assert at.session_state[state.setting_key("lambda_lse")] == 6.0
    assert score(at) == base and "lsm" not in at.query_params


# ----------------------------------------------------------------------------- full state in the URL


def test_a_link_sets_every_head_setting_and_is_written_back(app, bundle):
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import explain, gallery_regions

    image_id = bundle.image_ids[2]
    sentence = bundle.captions[image_id][0]
    word = sentence.split()[1]
    link = {"image": image_id, "q": sentence, "word": word, "k": "5", "head": "scan_i2t", "norm": "l2norm",
            "lsm": "4.3", "agg": "Mean", "lse": "20"}
    at = open_link(app, **link)
    no_exception(at)
    assert not at.warning and not at.error
    model = load_model(bundle.model)
    wanted = HeadSettings.for_head("scan_i2t", model.config, dict(agg_func="Mean", lambda_softmax=4.3,
                                                                  lambda_lse=20.0, raw_feature_norm="l2norm"))
    shown = tuple(at.session_state[state.setting_key(n)] for n in ("agg_func", "lambda_softmax", "lambda_lse",
                                                                   "raw_feature_norm"))
    assert (at.session_state[state.HEAD_KEY], *shown, at.session_state[explore.K_KEY]) == (
        "scan_i2t", "Mean", 4.3, 20.0, "l2norm", 5)
    expected = explain(model, gallery_regions(load_gallery(bundle.gallery), image_id), sentence,
                       wanted.build(model)).score
    assert score(at) == f"{expected:.4f}"
    assert dict(at.query_params) == link  # the app writes back exactly the state it shows
    # a reload (a new session on the same URL) shows the same
    again = open_link(AppTest.from_file(APP, default_timeout=TIMEOUT), **link)
    assert score(again) == score(at) and again.session_state[state.setting_key("agg_func")] == "Mean"


def test_changing_a_control_writes_it_into_the_link(app, bundle):
    image_id = bundle.image_ids[0]
    at = open_link(app, image=image_id, q=bundle.captions[image_id][0])
    at.selectbox(key=state.setting_key("raw_feature_norm")).set_value("softmax").run()
    at.slider(key=state.setting_key("lambda_lse")).set_value(12.5).run()
    assert at.query_params["norm"] == "softmax" and at.query_params["lse"] == "12.5"
    at.switch_page(PAGES["Retrieve"]).run()  # every page carries the head settings
    no_exception(at)
    assert dict(at.query_params) == {"norm": "softmax", "lse": "12.5"}


@pytest.fixture
def two_bundled_models(bundle, monkeypatch, tmp_path):
    """A pretrained/ folder with the fixture model twice: ``scan-emoji-t2i`` and an i2t variant."""
    import scan_viz.app.bundle as app_bundle
    import scan_viz.model as scan_model

    pretrained = tmp_path / "pretrained"
    for name in ("scan-emoji-t2i", "scan-emoji-i2t"):
        shutil.copytree(bundle.model, pretrained / name)
    config_path = pretrained / "scan-emoji-i2t" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(cross_attn="i2t", lambda_softmax=4.0, lambda_lse=5.0)
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr(scan_model, "PRETRAINED_DIR", pretrained)
    monkeypatch.setattr(app_bundle, "PRETRAINED_DIR", pretrained)
    monkeypatch.setenv("SCAN_VIZ_MODEL", "scan-emoji-t2i")
    monkeypatch.setenv("SCAN_VIZ_GALLERY", str(bundle.gallery))
    monkeypatch.setenv("SCAN_VIZ_DETECTOR", str(bundle.detector))
    return pretrained


def test_the_served_model_survives_a_reload(two_bundled_models, bundle):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page(PAGES["Model"]).run()
    at.selectbox(key="md_bundled_name").set_value("scan-emoji-i2t")
    at.form_submit_button[0].click().run()
    no_exception(at)
    assert at.query_params["model"] == "scan-emoji-i2t"
    image_id = bundle.image_ids[4]
    sentence = bundle.captions[image_id][0]
    at.switch_page(PAGES["Retrieve"]).run()
    assert dict(at.query_params) == {"model": "scan-emoji-i2t"}
    # the link Explore writes names the model; a reload of it serves that model with its own settings
    explore_link = {"image": image_id, "q": sentence, "model": "scan-emoji-i2t"}
    again = open_link(AppTest.from_file(APP, default_timeout=TIMEOUT), **explore_link)
    no_exception(again)
    assert any("`scan-emoji-i2t`" in c.value for c in again.sidebar.caption)
    assert again.session_state[state.HEAD_KEY] == "scan_i2t"
    assert again.session_state[state.setting_key("lambda_softmax")] == 4.0
    assert dict(again.query_params) == explore_link
    default = open_link(AppTest.from_file(APP, default_timeout=TIMEOUT), image=image_id, q=sentence)
    assert default.session_state[state.HEAD_KEY] == "scan_t2i" and score(default) != score(again)
    assert default.query_params["model"] == "scan-emoji-t2i"


def test_a_link_never_loads_a_path(two_bundled_models, bundle):
    for model in ("/etc/passwd", "../pretrained/scan-emoji-i2t", "scan-emoji-nope"):
        at = open_link(AppTest.from_file(APP, default_timeout=TIMEOUT), image=bundle.image_ids[0], q="a red car",
                       model=model)
        no_exception(at)
        assert len(at.warning) == 1 and repr(model) in at.warning[0].value and not at.error
        assert any("`scan-emoji-t2i`" in c.value for c in at.sidebar.caption)


def page_text(at: AppTest) -> str:
    """Everything the page shows as text: Markdown, alerts, captions, labels, plain text and code."""
    return "\n".join(markdown_shown(at) + [e.value for e in at.text] + [e.value for e in at.code])


@pytest.mark.parametrize("variable", ["SCAN_VIZ_MODEL", "SCAN_VIZ_GALLERY"])
def test_a_broken_served_model_or_gallery_shows_no_server_path(bundle, monkeypatch, tmp_path, caplog, variable):
    broken = tmp_path / "operator-only" / "broken"
    broken.mkdir(parents=True)
    for name in ("config.json", "gallery.json"):
        (broken / name).write_text("{not json", encoding="utf-8")
    for name, value in {**bundle.env(), variable: str(broken)}.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.ERROR, logger="scan_viz.app.bundle"):
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
        no_exception(at)
        assert [e.value for e in at.error] == [literal("the server's model and gallery could not be loaded; the "
                                                       "operator's log has the details")]
        shown = page_text(at)
        at.switch_page(PAGES["Model"]).run()
        no_exception(at)
        shown += page_text(at)
    assert "operator-only" not in shown and str(tmp_path) not in shown
    assert str(broken) in caplog.text and variable in caplog.text  # the operator's log says what and where


# ----------------------------------------------------------------------------- one score everywhere


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """The files the app offers for download in this test, by file name (recorded as Streamlit stores them)."""
    offered = {}
    keep = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        offered[filename] = path_or_data
        return keep(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return offered


def test_app_download_and_cli_give_the_same_result(app, bundle, downloads, tmp_path, capsys):
    from scan_viz.cli import main

    image_id = bundle.image_ids[5]
    sentence = bundle.captions[image_id][1]
    at = open_link(app, image=image_id, q=sentence, agg="Max", lsm="4.5", norm="l1norm")
    no_exception(at)
    record = json.loads(downloads[f"{image_id}-alignment.json"])
    assert main(["explain", "--model", str(bundle.model), "--gallery", str(bundle.gallery), "--gallery-image",
                 image_id, "--text", sentence, "--out", str(tmp_path), "--agg", "Max", "--lambda-softmax", "4.5",
                 "--raw-feature-norm", "l1norm"]) == 0
    printed = capsys.readouterr().out
    cli = json.loads((tmp_path / "alignment.json").read_text())
    provenance = ("scan_viz_version", "model", "image", "head_params", "text", "tokens", "head", "attention_label")
    assert {k: record[k] for k in provenance} == {k: cli[k] for k in provenance}
    assert record["image"] == {"gallery": "app test gallery", "id": image_id}
    assert record["head_params"]["agg_func"] == "Max" and record["head_params"]["lambda_softmax"] == 4.5
    assert cli["score"] == pytest.approx(record["score"], abs=1e-6)
    assert score(at) == f"{record['score']:.4f}" and printed.startswith(f"score {record['score']:.4f} ")


def test_an_uploads_download_names_the_file(app, downloads):
    at = app.run()
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    at.text_input(key=explore.Q_KEY).input("a red car").run()
    at.file_uploader[0].set_value(("my photo.png", png_bytes(), "image/png")).run()
    no_exception(at)
    record = json.loads(downloads["upload-alignment.json"])
    assert record["image"] == {"file": "my photo.png"} and record["model"] == "model"
