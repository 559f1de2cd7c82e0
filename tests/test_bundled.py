"""The bundled artefacts: they load, fit together, and do what pretrained/README.md says (on a slice).

These check the committed files in pretrained/ and examples/gallery, not the training code: a model that
lost its weights, a gallery whose regions no longer match its detector, or a broken vocabulary fails here.
"""
import json

import numpy as np
import pytest

from scan_viz.evaluation.metrics import evaluate
from scan_viz.gallery import load_gallery
from scan_viz.model import PRETRAINED_DIR, load_model
from scan_viz.pipeline import DEFAULT_GALLERY, DEFAULT_MODEL, detect, detector_for, explain, pointing_on_gallery

pytestmark = pytest.mark.skipif(not (PRETRAINED_DIR / DEFAULT_MODEL).is_dir(), reason="no bundled model")
N = 100  # gallery images in the slice (500 captions)
# measured on the full gallery: rsum 208.8 (t2i) and 202.3 (i2t) over 1,000 images; 100 images are easier
RSUM_FLOOR = {"scan-emoji-t2i": 200.0, "scan-emoji-i2t": 200.0}


@pytest.fixture(scope="module")
def gallery():
    return load_gallery(DEFAULT_GALLERY)


@pytest.mark.parametrize("name", ["scan-emoji-t2i", "scan-emoji-i2t"])
def test_bundled_model_retrieves_and_points_on_a_gallery_slice(gallery, name):
    import torch

    torch.set_num_threads(1)
    model = load_model(name)
    sims = model.similarity(gallery.regions.features[:N], gallery.captions[:5 * N])
    result = evaluate(sims, gallery.caption_image[:5 * N])
    assert result.rsum > RSUM_FLOOR[name], result  # chance on 100 images is about 2 x (1 + 5 + 10) = 32

    pointing = pointing_on_gallery(model, _first(gallery, N), model.head())
    assert pointing.per_type["object"] > pointing.random["object"] + 20


def _first(gallery, n):
    from scan_viz.gallery import Gallery

    regions = gallery.regions.subset(slice(0, n))
    labels = gallery.region_labels[:n] if gallery.region_labels else None
    return Gallery(gallery.root, gallery.name, gallery.records[:n], regions, labels)


def test_bundled_detector_fits_the_model_and_the_gallery(gallery):
    model = load_model(DEFAULT_MODEL)
    detector = detector_for(model)
    image_id = gallery.ids[0]
    regions = detect(detector, gallery.load_image(image_id))
    assert regions.features.shape == (36, model.config.img_dim) == gallery.regions.features.shape[1:]
    # the stored regions were extracted before the gallery's JPEGs were re-encoded (a known drift, see
    # pretrained/README.md), so only the layout is compared here
    assert gallery.regions.boxes.shape[1:] == regions.boxes.shape
    al = explain(model, regions, gallery.captions_of(image_id)[0])
    assert al.attention.shape == (len(al.words), 36)


def test_metrics_file_matches_the_bundle():
    metrics = json.loads((PRETRAINED_DIR / "metrics.json").read_text())
    assert {"detector", "scan-emoji-t2i", "scan-emoji-i2t"} <= set(metrics)
    assert metrics["scan-emoji-t2i"]["n_images"] == len(load_gallery(DEFAULT_GALLERY))


def test_bundled_gallery_captions_carry_claims_true_of_their_own_image(gallery):
    # claims come from `python -m scan_viz.gallery.annotate annotate --gallery examples/gallery` (or a world written with them)
    assert gallery.has_claims
    truth = gallery.truth
    assert truth[np.arange(len(gallery.captions)), gallery.caption_image].all()
    assert 1.5 < truth.sum(axis=1).mean() < 20  # captions are short: many fit several images, none fits all
