"""The photo gallery's hand-written ground truth (examples/photos/annotations.json) is usable by evaluation.

What would break pointing accuracy or a gallery build is checked here: boxes inside their image with a positive
area, box indices that exist, words that are exactly the tokenizer's tokens of their caption, grounded words with
boxes and function words without, every picture present at its stated size, licences that allow redistribution,
and a dev/test split with both sides present. The pictures are also rebuilt from the installed packages with
tools/make_photo_gallery.py and compared with the committed ones (skipped where those packages are missing).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scan_viz.errors import ScanVizError
from scan_viz.safe_files import read_json
from scan_viz.text import tokenize

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "examples" / "photos"
ANNOTATIONS = PHOTOS / "annotations.json"
TOOL = REPO / "tools" / "make_photo_gallery.py"

#: licences that allow shipping the picture inside this repository (see examples/photos/LICENSES.md)
ALLOWED_LICENCES = {"public domain", "CC0-1.0", "CC-BY-2.0"}
#: types a caption word may have; the first group must point at boxes, "function" must not
GROUNDED_TYPES = {"object", "person", "colour", "stuff", "count", "size", "position", "relation", "action"}
KINDS = {"object", "person", "stuff"}
SPLITS = {"dev", "test"}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    doc = read_json(ANNOTATIONS, "photo annotations")
    assert doc["format"] == "scan-viz-gallery" and doc["format_version"] == 2
    return doc["images"]


def _tool():
    spec = importlib.util.spec_from_file_location("make_photo_gallery", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclass looks its module up by name
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_records_have_the_keys_evaluation_reads(records):
    keys = {"id", "file", "width", "height", "split", "licence", "source", "objects", "captions"}
    ids = [record["id"] for record in records]
    assert len(ids) == len(set(ids)) and len(ids) >= 6
    for record in records:
        assert keys <= set(record), record["id"]
        assert record["file"] == f"images/{record['id']}.jpg"
        assert record["split"] in SPLITS, record["id"]
        assert record["licence"] in ALLOWED_LICENCES, (record["id"], record["licence"])
        assert 4 <= len(record["captions"]) <= 6, record["id"]


def test_every_picture_is_present_at_its_stated_size(records):
    for record in records:
        with Image.open(PHOTOS / record["file"]) as image:
            assert image.format == "JPEG" and image.mode == "RGB", record["id"]
            assert image.size == (record["width"], record["height"]), record["id"]
            assert max(image.size) <= 640, record["id"]
    assert sorted(p.name for p in (PHOTOS / "images").iterdir()) == sorted(f"{r['id']}.jpg" for r in records)


def test_boxes_lie_inside_their_image_with_a_positive_area(records):
    for record in records:
        assert record["objects"], record["id"]
        for obj in record["objects"]:
            x1, y1, x2, y2 = obj["box"]
            where = (record["id"], obj["category"], obj["box"])
            assert 0 <= x1 < x2 <= record["width"] and 0 <= y1 < y2 <= record["height"], where
            assert obj["kind"] in KINDS and obj["category"].strip(), where


def test_words_are_the_tokenizers_tokens_and_point_at_existing_boxes(records):
    n_grounded = 0
    for record in records:
        n_objects = len(record["objects"])
        for caption in record["captions"]:
            words = caption["words"]
            assert [w["word"] for w in words] == [t.text for t in tokenize(caption["text"])], caption["text"]
            for w in words:
                where = (record["id"], caption["text"], w["word"])
                assert all(isinstance(i, int) and 0 <= i < n_objects for i in w["boxes"]), where
                assert len(set(w["boxes"])) == len(w["boxes"]), where
                if w["type"] == "function":
                    assert w["boxes"] == [], where
                else:
                    assert w["type"] in GROUNDED_TYPES and w["boxes"], where
                    n_grounded += 1
            assert any(w["type"] in {"object", "person", "stuff"} for w in words), caption["text"]
    assert n_grounded >= 100


def test_people_are_labelled_as_people(records):
    """A person word points at a box of kind "person" (the largest-region baseline and the people row need it)."""
    for record in records:
        for caption in record["captions"]:
            for w in caption["words"]:
                if w["type"] == "person":
                    assert all(record["objects"][i]["kind"] == "person" for i in w["boxes"]), caption["text"]


def test_there_is_a_dev_split_to_tune_on_and_a_test_split_to_report(records):
    splits = [record["split"] for record in records]
    assert splits.count("dev") >= 2 and splits.count("test") >= 1
    assert splits.count("dev") <= len(splits) / 2  # about a third: the rest is held out


def test_bounded_reader_refuses_an_oversized_annotations_file(tmp_path):
    big = tmp_path / "annotations.json"
    big.write_bytes(ANNOTATIONS.read_bytes())
    with pytest.raises(ScanVizError):
        read_json(big, "photo annotations", max_bytes=100)


def test_the_tool_lists_exactly_the_annotated_photos(records):
    assert sorted(source.id for source in _tool().SOURCES) == sorted(record["id"] for record in records)


def test_the_tool_rebuilds_the_committed_pictures(tmp_path, records):
    pytest.importorskip("skimage", reason="scikit-image ships the photos the tool reads")
    pytest.importorskip("sklearn", reason="scikit-learn ships the photos the tool reads")
    sizes = _tool().make_images(tmp_path / "images")
    assert sizes == {r["id"]: (r["width"], r["height"]) for r in records}
    for record in records:
        rebuilt = np.asarray(Image.open(tmp_path / "images" / f"{record['id']}.jpg"), dtype=np.int16)
        committed = np.asarray(Image.open(PHOTOS / record["file"]), dtype=np.int16)
        # the same pixels and JPEG settings; a different libjpeg may round a few values differently
        assert rebuilt.shape == committed.shape and np.abs(rebuilt - committed).mean() < 1.0, record["id"]


def test_the_annotations_are_a_gallery_that_pointing_reads(records, tmp_path):
    """Written with the project's gallery writer (regions: the annotated boxes themselves, random features) and
    read back by the gallery reader, every grounded word of every caption is scored by pointing_on_gallery (a tiny
    random model: only the plumbing is checked here, not a model's accuracy); each word's own boxes are among the
    regions, so the random-region baseline is positive for every word type."""
    import torch

    from scan_viz.model.config import ScanConfig
    from scan_viz.regions.store import RegionStore
    from scan_viz.gallery import load_gallery, write_gallery
    from scan_viz.model import ScanModel
    from scan_viz.pipeline import pointing_on_gallery
    from scan_viz.text import Vocabulary

    torch.manual_seed(0)
    n_regions = max(len(r["objects"]) for r in records)
    boxes = np.zeros((len(records), n_regions, 4), dtype=np.float32)
    for row, record in enumerate(records):
        boxes[row, :len(record["objects"])] = [o["box"] for o in record["objects"]]
    store = RegionStore(ids=[r["id"] for r in records],
                        features=np.random.default_rng(0).normal(size=(len(records), n_regions, 8)).astype(np.float32),
                        boxes=boxes, image_sizes=np.array([(r["width"], r["height"]) for r in records]),
                        n_boxes=np.array([len(r["objects"]) for r in records]))
    pictures = [(PHOTOS / r["file"]).read_bytes() for r in records]
    write_gallery(tmp_path / "photos", "sample photos", records, pictures, store, None)
    gallery = load_gallery(tmp_path / "photos")
    assert gallery.ids == [r["id"] for r in records] and len(gallery.captions) == sum(len(r["captions"]) for r in records)

    vocab = Vocabulary.build(gallery.captions, threshold=1)
    model = ScanModel(ScanConfig(img_dim=8, embed_size=16, word_dim=8), vocab)
    result = pointing_on_gallery(model, gallery, model.head()).to_dict()
    expected: dict[str, int] = {}
    for record in records:
        for caption in record["captions"]:
            for w in caption["words"]:
                if w["boxes"]:
                    expected[w["type"]] = expected.get(w["type"], 0) + 1
    assert result["counts"] == dict(sorted(expected.items()))
    for word_type, value in result["baselines"]["random"].items():
        assert 0 < value <= 100, word_type
