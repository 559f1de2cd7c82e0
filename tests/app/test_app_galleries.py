"""The app offers every bundled gallery and pairs it with the models whose detector made its region features.

Two bundled galleries are staged here with the project's gallery writer: the app fixture's gallery as "emoji"
(made by the fixture's detector, folder name ``detector``) and a small "photos" gallery whose gallery.json says it
was indexed with a model ``photo-test`` and a fake detector ``detector-photo-test``; two bundled models read one
each. Picking a model serves its gallery and the other way round, a link carries the gallery, a pair that does not
fit is one line and nothing of the other detector is scored, and the emoji gallery behaves as it did.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from app_fixture import app_fixture
from streamlit.testing.v1 import AppTest

from scan_viz.app import galleries, models, state
from scan_viz.app.bundle import Sources, load_bundle
from scan_viz.errors import ScanVizError

torch.set_num_threads(1)

APP = str(Path(__file__).resolve().parents[2] / "app.py")
MODEL_PAGE = "scan_viz/app/models.py"
TIMEOUT = 120
PHOTO_MODEL, PHOTO_DETECTOR = "photo-test", "detector-photo-test"
EMOJI_MODEL = "scan-emoji-t2i"
N_PHOTOS = 4


@dataclasses.dataclass(frozen=True)
class Staged:
    emoji: str
    photos: str
    emoji_name: str
    photos_name: str


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple:
    """pretrained/ with an emoji and a photo model, and the photo gallery (written once per module)."""
    from scan_viz.gallery import load_gallery, write_gallery

    bundle = app_fixture()
    root = tmp_path_factory.mktemp("galleries")
    pretrained = root / "pretrained"
    shutil.copytree(bundle.model, pretrained / EMOJI_MODEL)
    shutil.copytree(bundle.model, pretrained / PHOTO_MODEL)
    config_file = pretrained / PHOTO_MODEL / "config.json"
    config = json.loads(config_file.read_text())
    config["extra"]["detector"] = PHOTO_DETECTOR
    config_file.write_text(json.dumps(config))

    emoji = load_gallery(bundle.gallery)
    ids = [f"photo_{n}" for n in range(N_PHOTOS)]
    records = [{**emoji.records[n], "id": ids[n]} for n in range(N_PHOTOS)]
    for record in records:
        record.pop("file", None)
    store = dataclasses.replace(emoji.regions.subset(slice(0, N_PHOTOS)), ids=ids)
    photos = root / "photos"
    write_gallery(photos, "photo test gallery", records, [emoji.load_image(i) for i in emoji.ids[:N_PHOTOS]],
                  store, emoji.region_labels[:N_PHOTOS], indexed_with={"model": PHOTO_MODEL, "detector": PHOTO_DETECTOR})
    assert load_gallery(photos).indexed_with == {"model": PHOTO_MODEL, "detector": PHOTO_DETECTOR}
    return pretrained, photos, bundle


@pytest.fixture
def two(staged, monkeypatch) -> Staged:
    """The app serving the emoji model on the emoji gallery, with the photo model and gallery bundled beside."""
    import scan_viz.app.bundle as app_bundle
    import scan_viz.model as scan_model

    pretrained, photos, bundle = staged
    monkeypatch.setattr(scan_model, "PRETRAINED_DIR", pretrained)
    monkeypatch.setattr(app_bundle, "PRETRAINED_DIR", pretrained)
    monkeypatch.setattr(galleries, "BUNDLED_GALLERIES", (
        galleries.BundledGallery("emoji", bundle.gallery, legacy_detector="detector"),
        galleries.BundledGallery("photos", photos)))
    monkeypatch.setenv("SCAN_VIZ_MODEL", EMOJI_MODEL)
    monkeypatch.setenv("SCAN_VIZ_GALLERY", str(bundle.gallery))
    monkeypatch.setenv("SCAN_VIZ_DETECTOR", str(bundle.detector))
    return Staged(str(bundle.gallery), str(photos), "app test gallery", "photo test gallery")


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def served(at: AppTest) -> tuple[str, str]:
    """(model, gallery name) as the sidebar says it serves them."""
    line = next(c.value for c in at.sidebar.caption if c.value.startswith("Serving "))
    model, _, rest = line[len("Serving "):].partition(" on ")
    return model.strip("`"), rest.rsplit(" (", 1)[0].strip("`")


def open_link(**params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


# ----------------------------------------------------------------------------- the library side


def test_a_gallery_says_which_detector_made_it(two):
    assert galleries.gallery_detector(two.photos) == PHOTO_DETECTOR
    assert galleries.gallery_detector(two.emoji) == "detector"  # no indexed_with: the bundled entry says
    assert galleries.model_detector(PHOTO_MODEL) == PHOTO_DETECTOR
    assert galleries.model_detector(EMOJI_MODEL) == "detector"
    assert galleries.model_detector("/some/checkpoint.pth.tar") is None  # not bundled: not judged here
    assert [g.name for g in galleries.offered_galleries()] == ["emoji", "photos"]


def test_a_null_indexed_detector_is_the_indexing_models_own(two, tmp_path):
    folder = tmp_path / "g"
    shutil.copytree(two.photos, folder)
    meta = json.loads((folder / "gallery.json").read_text())
    meta["indexed_with"] = {"model": PHOTO_MODEL, "detector": None}  # what `scan-viz index` writes by default
    (folder / "gallery.json").write_text(json.dumps(meta))
    assert galleries.gallery_detector(folder) == PHOTO_DETECTOR
    meta["indexed_with"] = {"model": "/elsewhere/model", "detector": None}
    (folder / "gallery.json").write_text(json.dumps(meta))
    assert galleries.gallery_detector(folder) is None  # unknown: only the feature size is checked


def test_a_gallery_without_a_region_store_is_not_offered(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    (photos / "images").mkdir(parents=True)
    (photos / "annotations.json").write_text("{}")  # examples/photos before its region store is built
    monkeypatch.setattr(galleries, "BUNDLED_GALLERIES", (galleries.BundledGallery("photos", photos),))
    assert galleries.offered_galleries() == [] and galleries.offered_gallery("photos") is None


def test_pairing_picks_the_gallery_of_the_models_detector_and_back(two):
    assert galleries.gallery_for(PHOTO_MODEL, [two.emoji]) == two.photos
    assert galleries.gallery_for(EMOJI_MODEL, [two.emoji]) == two.emoji
    assert galleries.model_for(two.photos, [EMOJI_MODEL]) == PHOTO_MODEL
    assert galleries.model_for(two.emoji, [EMOJI_MODEL]) == EMOJI_MODEL


def test_loading_a_mismatched_pair_is_one_line_and_scores_nothing(two, monkeypatch):
    import scan_viz.app.bundle as app_bundle

    def never(*args, **kwargs):
        raise AssertionError("the gallery was encoded by a model that cannot read its features")

    monkeypatch.setattr(app_bundle.GalleryIndex, "build", never)
    for model, gallery, made_by in ((PHOTO_MODEL, two.emoji, "detector"), (EMOJI_MODEL, two.photos, PHOTO_DETECTOR)):
        with pytest.raises(ScanVizError) as error:
            load_bundle(Sources(model=model, gallery=gallery))
        message = str(error.value)
        assert "\n" not in message and f"the detector {made_by}" in message and model in message


# ----------------------------------------------------------------------------- the app


def test_the_model_page_offers_both_galleries_and_a_gallery_follows_its_model(two):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page(MODEL_PAGE).run()
    no_exception(at)
    assert at.selectbox(key="md_bundled_gallery").options == [models.FOLLOWS_MODEL, "emoji", "photos"]
    at.selectbox(key="md_bundled_name").set_value(PHOTO_MODEL)
    at.form_submit_button[0].click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert served(at) == (PHOTO_MODEL, two.photos_name)
    assert at.query_params["model"] == PHOTO_MODEL and at.query_params["gallery"] == "photos"
    # and back: the emoji model brings the operator's (emoji) gallery
    at.selectbox(key="md_bundled_name").set_value(EMOJI_MODEL)
    at.selectbox(key="md_bundled_gallery").set_value(models.FOLLOWS_MODEL)
    at.form_submit_button[0].click().run()
    no_exception(at)
    assert not at.error and served(at) == (EMOJI_MODEL, two.emoji_name)
    assert "gallery" not in at.query_params  # the operator's gallery is not written, as before


def test_the_model_page_refuses_a_mismatched_pair_with_one_line(two):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page(MODEL_PAGE).run()
    at.selectbox(key="md_bundled_name").set_value(PHOTO_MODEL)
    at.selectbox(key="md_bundled_gallery").set_value("emoji")
    at.form_submit_button[0].click().run()
    no_exception(at)
    assert len(at.error) == 1 and "\n" not in at.error[0].value
    assert "detector" in at.error[0].value and PHOTO_DETECTOR in at.error[0].value
    assert served(at) == (EMOJI_MODEL, two.emoji_name)  # what was served stays


@pytest.mark.parametrize("link", [{"model": PHOTO_MODEL}, {"gallery": "photos"},
                                  {"model": PHOTO_MODEL, "gallery": "photos"}])
def test_a_link_to_either_half_serves_the_pair_and_round_trips(two, link):
    at = open_link(**link)
    no_exception(at)
    assert not at.warning and not at.error and served(at) == (PHOTO_MODEL, two.photos_name)
    written = {key: at.query_params[key] for key in ("model", "gallery")}
    assert written == {"model": PHOTO_MODEL, "gallery": "photos"}
    # the written link, opened in a new session, serves the same pair and writes the same link
    again = open_link(**dict(at.query_params))
    no_exception(again)
    assert served(again) == (PHOTO_MODEL, two.photos_name) and dict(again.query_params) == dict(at.query_params)


def test_explore_on_the_photo_gallery_draws_its_images(two):
    at = open_link(gallery="photos", image="photo_1", q="a red car")
    no_exception(at)
    assert not at.warning and not at.error
    assert at.query_params["image"] == "photo_1" and at.query_params["gallery"] == "photos"
    assert any("\u00b7" in c for im in at.image for c in im.captions)  # word panels on a photo-gallery image


@pytest.mark.parametrize("link, words", [
    ({"model": EMOJI_MODEL, "gallery": "photos"}, ("the link's gallery is not used: the gallery photos", PHOTO_DETECTOR, EMOJI_MODEL)),
    ({"gallery": "nope"}, ("'nope' is not a bundled gallery (emoji, photos)",)),
    ({"gallery": "../examples"}, ("is not a bundled gallery's name",)),
])
def test_a_bad_gallery_link_is_one_line_and_the_served_pair_stays(two, link, words):
    at = open_link(**link)
    no_exception(at)
    assert len(at.warning) == 1 and "\n" not in at.warning[0].value, [w.value for w in at.warning]
    assert all(w in at.warning[0].value for w in words), at.warning[0].value
    assert served(at) == (EMOJI_MODEL, two.emoji_name)


def test_the_emoji_gallery_behaves_as_before(two):
    """No link: the operator's model and gallery, and a link without a gallery key; a link to an emoji model keeps
    the operator's gallery, as before galleries were paired."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    no_exception(at)
    assert served(at) == (EMOJI_MODEL, two.emoji_name) and "gallery" not in at.query_params
    at = open_link(model=EMOJI_MODEL)
    no_exception(at)
    assert not at.warning and served(at) == (EMOJI_MODEL, two.emoji_name) and "gallery" not in at.query_params
    assert state.bundle_home(Sources.from_env()) == "operator"
    assert state.bundle_home(Sources(model=PHOTO_MODEL, gallery=two.photos)) == "shared"


def test_evaluate_measures_the_paired_gallery(two):
    """Evaluate, reached with ?gallery=photos, measures the photo gallery with the photo model: its pointing
    table's word counts are the library's on that pair."""
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import pointing_on_gallery

    at = open_link(gallery="photos")
    at.switch_page("scan_viz/app/evaluate.py").run()
    no_exception(at)
    start = [b for b in at.button if b.label == "Evaluate on the gallery"]
    if start:
        start[0].click().run()
        no_exception(at)
    assert not at.error and served(at) == (PHOTO_MODEL, two.photos_name)
    model = load_model(PHOTO_MODEL)
    expected = pointing_on_gallery(model, load_gallery(two.photos), model.head()).to_dict()
    pointing = next(d.value for d in at.dataframe if "word type" in d.value.columns)
    assert pointing["words"].tolist() == list(expected["counts"].values())
    assert pointing["pointing accuracy %"].tolist() == [round(v, 1) for v in expected["pointing"].values()]
    assert at.query_params["gallery"] == "photos" and at.query_params["model"] == PHOTO_MODEL
