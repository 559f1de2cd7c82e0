"""The app with hostile files (issue 15, the app's side): strings from a checkpoint or config.json shown as text,
direction controls neutralised, an upload that fails leaves the served one working, messages name files as the
visitor named them, and no error, foreseen or not, reaches a visitor as Streamlit's exception box.

``streamlit.testing.v1.AppTest`` on the fixture bundle (tests/app_fixture.py); the browser-level check of the
model card (no link, no request off the server) is tests/browser/test_browser_hostile.py.
"""
from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_app import APP, PAGES, TIMEOUT, no_exception, open_link, panel_images, write_npz_regions
from test_app_safety import assert_nothing_renders_as_a_link, outside_code_spans, page_text

from app_fixture import INJECTION_PAYLOADS
from scan_viz.app import explore, models, state, uploads, user_files
from scan_viz.app.params import parse_explore_query
from scan_viz.app.safe_text import BIDI_CONTROLS, literal, plain
from scan_viz.errors import ScanVizError
from test_app import (APP, PAGES, TIMEOUT, app, bundle, no_exception, open_link, panel_images,  # noqa: F401 - fixtures
                      write_npz_regions)

LINK = "[Session expired, log in again](https://evil.example/login)"
#: Strings a visitor's config.json can set that the model card shows: data_name, and extra's keys and values
#: (a value with a "/" is shown by its last part, as a path would be: these have none).
HOSTILE_EXTRA = {"[key](https://evil.example/k)": "<img src=x onerror=alert(1)> **bold** :red[red]",
                 "domain": ":warning: [x](javascript:alert(1)) www.evil.example"}
UPLOAD_DIR = str(Path(tempfile.gettempdir()) / user_files.UPLOAD_PREFIX)
RLO = "\u202e"


# ----------------------------------------------------------------------------- files a visitor uploads


def as_upload(name: str, data: bytes) -> tuple[str, bytes, str]:
    return (name, data, "application/octet-stream")


def model_folder_files(bundle, config_changes: dict | None = None) -> list[tuple[str, bytes, str]]:
    """The fixture model as a scan-viz model folder's three files, its config.json changed by ``config_changes``
    (the machine-specific detector path dropped: a visitor's model names no detector)."""
    config = json.loads((bundle.model / "config.json").read_text(encoding="utf-8"))
    config["extra"] = {}
    config.update(config_changes or {})
    return [as_upload("config.json", json.dumps(config).encode()),
            as_upload("model.safetensors", (bundle.model / "model.safetensors").read_bytes()),
            as_upload("vocab.json", (bundle.model / "vocab.json").read_bytes())]


def official_checkpoint(bundle, folder: Path) -> tuple[tuple[str, bytes, str], tuple[str, bytes, str]]:
    """The fixture model as an official model_best.pth.tar and its vocabulary file."""
    from scan_viz.model import load_model
    from scan_viz.model.checkpoint import write_official_checkpoint

    model = load_model(bundle.model)
    write_official_checkpoint(folder / "model_best.pth.tar", model.config, model.image_encoder.state_dict(),
                              model.text_encoder.state_dict())
    model.vocab.save(folder / "coco_precomp_vocab.json")
    return (as_upload("model_best.pth.tar", (folder / "model_best.pth.tar").read_bytes()),
            as_upload("coco_precomp_vocab.json", (folder / "coco_precomp_vocab.json").read_bytes()))


def gallery_files(bundle, folder: Path, img_dim: int | None = None):
    """Four of the fixture's images with their regions as .npz files (``img_dim``: features of another size)."""
    ids = list(bundle.image_ids[:4])
    regions = Path(tempfile.mkdtemp(dir=folder)) / "npz"
    write_npz_regions(bundle, regions, ids, img_dim=img_dim)
    return ([as_upload(f"{i}.npz", (regions / f"{i}.npz").read_bytes()) for i in ids],
            [as_upload(f"{i}.jpg", (bundle.gallery / "images" / f"{i}.jpg").read_bytes()) for i in ids])


def upload(at: AppTest, checkpoint: list, vocab, regions: list, images: list) -> AppTest:
    """Fill the Model page's upload form (``vocab`` None: left empty) and press Load."""
    if at.segmented_control(key=models.KIND_KEY).value != models.UPLOAD:
        at.segmented_control(key=models.KIND_KEY).set_value(models.UPLOAD).run()
    checkpoint_box, vocab_box, regions_box, images_box = at.file_uploader
    checkpoint_box.set_value(checkpoint)
    if vocab is not None:
        vocab_box.set_value(vocab)
    regions_box.set_value(regions)
    images_box.set_value(images)
    return at.form_submit_button[0].click().run()


def model_page(app: AppTest) -> AppTest:
    at = app.run()
    return at.switch_page(PAGES["Model"]).run()


def serving(at: AppTest) -> str:
    """The sidebar's "Serving ... on ..." line."""
    return next(c.value for c in at.sidebar.caption if c.value.startswith("Serving"))


def card_cells(at: AppTest) -> list[str]:
    """Every row label and cell of the model card's tables, as handed to Streamlit (which renders Markdown)."""
    cells = []
    for table in at.table:
        frame = table.value
        cells += [str(label) for label in frame.index] + [str(v) for v in frame.to_numpy().ravel()]
    return cells


# ----------------------------------------------------------------------------- item 1: a file's strings as text


def test_a_model_folders_strings_are_shown_literally_on_the_model_card(app, bundle, tmp_path):
    """Item 1, and item 5: a scan-viz model folder (vocab.json among its files, no vocabulary upload) loads."""
    regions, images = gallery_files(bundle, tmp_path)
    at = upload(model_page(app), model_folder_files(bundle, {"data_name": LINK, "extra": HOSTILE_EXTRA}), None,
                regions, images)
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert [s.value for s in at.success] == [f"Now serving {literal('your upload (scan-viz model)')} on "
                                             f"{literal('uploaded-images')} (4 images)."]
    cells = card_cells(at)
    for text in (LINK, *HOSTILE_EXTRA, *HOSTILE_EXTRA.values()):
        assert literal(text) in cells, text
    # a Markdown table cell or row label that is one code span renders nothing: no link, image, HTML or colour
    assert all(outside_code_spans(cell) == "" for cell in cells), [c for c in cells if outside_code_spans(c)]
    assert_nothing_renders_as_a_link(at)


def test_gallery_captions_and_ids_from_files_are_literal_everywhere(app, bundle):
    """A gallery file's captions and ids label the picker's buttons, their help and the example pills: Markdown
    sinks, so each is one code span."""
    at = open_link(app, q="a red car")  # no image yet: the picker is open
    no_exception(at)
    picks = [b for b in at.button if (b.key or "").startswith("pick_")]
    assert picks and all(b.label == literal(b.key[len("pick_"):]) for b in picks)
    assert all(b.help and outside_code_spans(b.help) == "" for b in picks)
    at = open_link(AppTest.from_file(APP, default_timeout=TIMEOUT), image=bundle.image_ids[0], q="a red car")
    options = at.pills(key=explore.EXAMPLES_KEY).options
    assert options == [literal(c) for c in bundle.captions[bundle.image_ids[0]]]


# ----------------------------------------------------------------------------- bidirectional controls


def test_direction_controls_are_shown_as_marks_and_removed_from_sentences():
    assert literal(f"abc{RLO}def") == "`abc[U+202E]def`"
    assert plain("\u2066x\u2069\u200f\u061c") == "[U+2066]x[U+2069][U+200F][U+061C]"
    assert all(c not in literal(c) for c in BIDI_CONTROLS)
    params, notes = parse_explore_query({"q": f"a red {RLO}car"})
    assert params.q == "a red car" and notes == ["the link's sentence had Unicode direction controls: removed"]


def test_a_direction_override_in_a_link_or_typed_does_not_reorder_the_page(app, bundle):
    image_id = bundle.image_ids[0]
    at = open_link(app, image=image_id, q=f"a {RLO}red car", word=f"{RLO}car")
    no_exception(at)
    assert at.text_input(key=explore.Q_KEY).value == "a red car"
    assert any("direction controls: removed" in w.value for w in at.warning)
    shown = page_text(at) + "".join(panel_images(at))
    assert not BIDI_CONTROLS & set(shown), [t for t in shown if BIDI_CONTROLS & set(t)]
    at.text_input(key=explore.Q_KEY).input(f"two {RLO}birds").run()  # pasted into the sentence box
    no_exception(at)
    assert at.text_input(key=explore.Q_KEY).value == "two birds"
    assert not BIDI_CONTROLS & set(page_text(at) + "".join(panel_images(at)))
    assert at.session_state[explore.PANELS_MARKER] == ["two", "birds"]


# ----------------------------------------------------------------------------- item 5: vocabulary


def test_an_official_checkpoint_without_its_vocabulary_says_what_is_missing(app, bundle, tmp_path):
    checkpoint, _ = official_checkpoint(bundle, tmp_path)
    regions, images = gallery_files(bundle, tmp_path)
    at = upload(model_page(app), [checkpoint], None, regions, images)
    no_exception(at)
    assert [e.value for e in at.error] == [literal("an official checkpoint needs its vocabulary: upload the "
                                                   "*_vocab.json it was trained with")]


# ----------------------------------------------------------------------------- item 6: a failed upload


@pytest.fixture
def served_upload(app, bundle, tmp_path) -> AppTest:
    """A session serving a valid upload (an official checkpoint with its vocabulary)."""
    checkpoint, vocab = official_checkpoint(bundle, tmp_path)
    regions, images = gallery_files(bundle, tmp_path)
    at = upload(model_page(app), [checkpoint], vocab, regions, images)
    no_exception(at)
    assert not at.error and serving(at).startswith(f"Serving {literal('your upload (model_best.pth.tar)')}")
    return at


def still_serving_the_first_upload(at: AppTest) -> None:
    assert not any(s.label.endswith("\u2026") for s in at.status), [s.label for s in at.status]  # not "Loading..."
    first = f"Serving {literal('your upload (model_best.pth.tar)')} on {literal('uploaded-images')}"
    assert serving(at).startswith(first)
    for page in ("Retrieve", "Evaluate", "Model"):
        at.switch_page(PAGES[page]).run()
        no_exception(at)
        assert not at.error, (page, [e.value for e in at.error])
        assert serving(at).startswith(first)


def test_an_upload_that_fails_to_load_leaves_the_previous_one_serving(served_upload, bundle, tmp_path):
    regions, images = gallery_files(bundle, tmp_path, img_dim=10)  # features the model cannot take
    at = upload(served_upload, model_folder_files(bundle), None, regions, images)
    no_exception(at)
    assert [e.value for e in at.error] == [literal("the gallery's region features are 10-d but the model takes 44-d: "
                                                   "give the features of the extractor the model was trained on")]
    still_serving_the_first_upload(at)


def test_an_upload_that_breaks_the_loader_leaves_the_previous_one_serving(served_upload, bundle, tmp_path,
                                                                         monkeypatch, caplog):
    """What no reader foresaw (a RecursionError, a MemoryError, a library bug) fails the upload, not the session."""
    load = state.load_bundle

    def breaks_on_the_model_folder(sources):
        if sources.model.endswith(f"/{user_files.MODEL_DIR}"):
            raise RecursionError(f"maximum recursion depth exceeded while reading {sources.model}/config.json")
        return load(sources)

    monkeypatch.setattr(state, "load_bundle", breaks_on_the_model_folder)
    regions, images = gallery_files(bundle, tmp_path)
    with caplog.at_level(logging.ERROR):
        at = upload(served_upload, model_folder_files(bundle), None, regions, images)
    no_exception(at)
    assert [e.value for e in at.error] == [literal("these files could not be loaded (an unexpected error; the "
                                                   "server's log has the details); check they are what the form "
                                                   "asks for")]
    assert [s.label for s in at.status] == ["Loading failed"]
    assert "RecursionError" in caplog.text  # the trace is the operator's
    still_serving_the_first_upload(at)


# ----------------------------------------------------------------------------- item 7: names, not server paths


def test_messages_name_uploaded_files_as_the_visitor_named_them(app, bundle, tmp_path):
    buffer = io.BytesIO()
    torch.save({"opt": {}, "model": [print]}, buffer)  # a pickled function: refused by the weights-only loader
    _, vocab = official_checkpoint(bundle, tmp_path)
    regions, images = gallery_files(bundle, tmp_path)
    at = upload(model_page(app), [as_upload("model_best.pth.tar", buffer.getvalue())], vocab, regions, images)
    no_exception(at)
    assert len(at.error) == 1 and at.error[0].value.startswith("`refusing to load model_best.pth.tar: it contains")
    assert UPLOAD_DIR not in page_text(at) and tempfile.gettempdir() not in at.error[0].value


def test_as_uploaded_replaces_every_upload_path():
    folder = f"{UPLOAD_DIR}a1_b2"
    cases = {f"refusing to load {folder}/model_best.pth.tar: x": "refusing to load model_best.pth.tar: x",
             f"{folder}/{user_files.REGIONS_DIR}/000001.npz: bad": "000001.npz: bad",
             f"images folder '{folder}/{user_files.IMAGES_DIR}' is empty": "images folder 'your images' is empty",
             f"{folder}/vocab.json is not JSON": "your vocabulary file is not JSON",
             f"{folder}/{user_files.MODEL_DIR}/config.json: no field": "config.json: no field",
             f"in {folder}: nothing": "in your upload: nothing"}
    for message, shown in cases.items():
        assert user_files.as_uploaded(message) == shown


# ----------------------------------------------------------------------------- the last resort


@pytest.mark.parametrize("page,target", [("Explore", "page_start"), ("Retrieve", "page_start"),
                                         ("Model", "head_controls")])
def test_an_unexpected_error_in_a_page_is_one_line_and_logged(app, bundle, monkeypatch, caplog, page, target):
    """An error inside a page (page_start) or in the frame around every page (the head controls)."""
    def broken(*args, **kwargs):
        raise KeyError("/srv/secret/path: an error nobody foresaw")

    at = app.run()
    if page != "Explore":
        at.switch_page(PAGES[page]).run()
    monkeypatch.setattr(state, target, broken)
    with caplog.at_level(logging.ERROR, logger="scan_viz.app.frame"):
        at.run()
    no_exception(at)
    assert [e.value for e in at.error] == [literal("this page stopped: an unexpected error; the server's log has the "
                                                   "details. Reload the page, or choose another model on the Model "
                                                   "page")]
    assert "/srv/secret" not in page_text(at)
    assert "Traceback" in caplog.text and "/srv/secret/path" in caplog.text


def test_a_user_error_that_escapes_a_page_is_its_one_line(app, monkeypatch):
    def refused(*args, **kwargs):
        raise ScanVizError(f"no such thing: {INJECTION_PAYLOADS[0]}")

    at = app.run()
    monkeypatch.setattr(state, "head_controls", refused)
    at.run()
    no_exception(at)
    assert [e.value for e in at.error] == [literal(f"no such thing: {INJECTION_PAYLOADS[0]}")]


def test_streamlits_own_control_flow_passes_the_last_resort(app, bundle):
    """st.switch_page (a RerunException) still moves to Explore: the handler leaves it alone."""
    at = app.run()
    at.switch_page(PAGES["Retrieve"]).run()
    at.text_input(key="rt_q").input(bundle.captions[bundle.image_ids[0]][0]).run()
    opens = [b for b in at.button if (b.key or "").startswith("rt_open_")]
    opens[0].click().run()
    no_exception(at)
    assert not at.error and explore.PANELS_MARKER in at.session_state


# ----------------------------------------------------------------------------- item 10, the app's parts


def test_a_broken_operator_model_asks_for_another_not_for_a_build(bundle, monkeypatch, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    for name, value in {**bundle.env(), "SCAN_VIZ_MODEL": str(broken)}.items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_exception(at)
    assert [i.value for i in at.info] == ["The server's own model is not available right now: choose another one on "
                                          "the **Model** page (a bundled model or your own upload), or tell the "
                                          "operator of this server."]
    assert "scan_viz.train.bundle" not in page_text(at)


def test_an_unforeseen_failure_of_the_operators_model_is_the_operators_line(app, monkeypatch, caplog, tmp_path):
    def out_of_memory(sources):
        raise MemoryError("while reading the server's gallery")

    monkeypatch.setenv("SCAN_VIZ_MODEL", str(tmp_path / "model"))  # sources this process has not loaded yet
    monkeypatch.setattr(state, "load_bundle", out_of_memory)
    with caplog.at_level(logging.ERROR):
        at = app.run()
    no_exception(at)
    assert [e.value for e in at.error] == [literal("the server's model and gallery could not be loaded; the "
                                                   "operator's log has the details")]
    assert "MemoryError" in caplog.text and "Traceback" in caplog.text


def test_compare_takes_scan_as_head_does(app, bundle):
    image_id = bundle.image_ids[1]
    at = open_link(app, image=image_id, q=bundle.captions[image_id][0], compare="scan,chan")
    no_exception(at)
    assert not at.warning, [w.value for w in at.warning]
    assert at.session_state[explore.COMPARE_KEY] == ["scan_t2i", "chan"]
    assert at.session_state[explore.COMPARE_MARKER] == ["scan_t2i", "chan"]
    assert parse_explore_query({"compare": "scan", "dir": "i2t"})[0].compare == "scan_i2t"


def test_a_link_note_quotes_a_long_value_clipped(app, bundle):
    at = open_link(app, image=bundle.image_ids[0], k="7" * 4000, lsm="9" * 4000)
    no_exception(at)
    notes = [w.value for w in at.warning]
    assert len(notes) == 2 and all(len(n) < 300 for n in notes), [len(n) for n in notes]
    assert notes[0].startswith("`the link's k='77777") and "...7777" in notes[0] and "outside 1..100" in notes[0]


def test_explore_says_the_formats_it_takes_and_refuses_others_whatever_their_name(app):
    from PIL import Image

    at = app.run()
    at.segmented_control(key=explore.SOURCE_KEY).set_value(explore.UPLOAD).run()
    box = at.file_uploader[0]
    assert box.label.startswith("Upload an image (PNG, JPEG or WebP, up to")
    assert sorted(t.lstrip(".") for t in box.proto.type) == sorted(uploads.UPLOAD_TYPES) == ["jpeg", "jpg", "png",
                                                                                            "webp"]
    for fmt in ("GIF", "BMP", "TIFF"):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format=fmt)
        at.text_input(key=explore.Q_KEY).input("a red car")
        at.file_uploader[0].set_value((f"photo-{fmt}.png", buffer.getvalue(), "image/png")).run()
        no_exception(at)
        assert [e.value for e in at.error] == [literal(f"photo-{fmt}.png is named .png but holds a {fmt} image: "
                                                       "save it in the format its name says, or rename it")]
