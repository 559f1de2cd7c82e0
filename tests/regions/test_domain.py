"""The out-of-domain check (scan_viz.regions.domain): a picture is called out of domain only when its regions are less like
the gallery's than every calibration image's; on the bundled model a gallery scene's JPEG is in, a photograph out."""
from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest

from scan_viz.regions.domain import DomainCheck

REPO = Path(__file__).resolve().parents[2]
PHOTO = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_threshold_is_the_lowest_calibration_score_and_far_pictures_are_out():
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((5, 16)))
    gallery = unit(centres[rng.integers(0, 5, (40, 6))] + 0.05 * rng.standard_normal((40, 6, 16)))
    check = DomainCheck.fit(gallery, n_reference=20, n_calibration=20)
    order = np.random.default_rng(0).permutation(40)
    reference = gallery[order[:20]].reshape(-1, 16)
    # the same statistic, re-stated: mean over a picture's regions of the cosine to the nearest reference region
    scores = [float(np.mean([max(float(r @ q) for q in reference) for r in gallery[i]])) for i in order[20:]]
    assert check.threshold == pytest.approx(min(scores), abs=1e-6) and check.n_calibration == 20
    assert check.in_domain(gallery[order[20]])
    assert not check.in_domain(unit(rng.standard_normal((6, 16))))  # unlike every cluster


def test_padding_regions_take_no_part():
    rng = np.random.default_rng(1)
    gallery = unit(rng.standard_normal((10, 4, 8)))
    lengths = np.full(10, 2)
    padded = gallery.copy()
    padded[:, 2:] = 0.0
    assert DomainCheck.fit(padded, lengths).threshold == DomainCheck.fit(gallery[:, :2]).threshold


@pytest.fixture(scope="module")
def bundled():
    from scan_viz.gallery import load_gallery
    from scan_viz.model import load_model
    from scan_viz.pipeline import detector_for, gallery_domain_check

    model = load_model("scan-emoji-t2i")
    gallery = load_gallery(REPO / "examples" / "gallery")
    return model, gallery, gallery_domain_check(model, gallery), detector_for(model, None)


def test_bundled_gallery_scenes_are_in_and_a_photograph_is_out(bundled):
    from scan_viz.pipeline import detect
    from scan_viz.regions.domain import embed_regions
    from scan_viz.regions.images import load_image

    model, gallery, check, detector = bundled
    for image_id in gallery.ids[:5]:  # the scene's JPEG, through the detector as an upload goes
        assert check.in_domain(embed_regions(model, detect(detector, gallery.load_image(image_id)))), image_id
    assert not check.in_domain(embed_regions(model, detect(detector, load_image(PHOTO))))


def test_explain_notes_an_out_of_domain_picture_only(tmp_path, capsys, bundled):
    from scan_viz.cli import main

    _, gallery, _, _ = bundled
    assert main(["explain", "--image", str(PHOTO), "--text", "a red car", "--out", str(tmp_path / "a")]) == 0
    assert "note: out of domain" in capsys.readouterr().out
    scene = gallery.image_path(gallery.ids[0])
    assert main(["explain", "--image", str(scene), "--text", "a red car", "--out", str(tmp_path / "b")]) == 0
    assert "out of domain" not in capsys.readouterr().out


def test_a_gallery_too_small_to_calibrate_calls_nothing_out_of_domain():
    """The 7-photo gallery leaves 4 calibration images: no threshold, so no note (a wrong one is worse)."""
    from scan_viz.regions.domain import MIN_CALIBRATION

    rng = np.random.default_rng(2)
    gallery = unit(rng.standard_normal((7, 5, 8)))
    check = DomainCheck.fit(gallery)
    assert check.n_calibration == 4 < MIN_CALIBRATION and check.threshold == -np.inf
    assert check.in_domain(unit(rng.standard_normal((5, 8))))


SCENE = REPO / "examples" / "gallery" / "images" / "test_000000.jpg"  # the lowest-scoring scene of the measured half
PHOTOS = sorted((REPO / "examples" / "photos" / "images").glob("*.jpg"))


def jpeg_again(image: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_a_bundled_emoji_scene_looks_drawn_and_bundled_photos_do_not():
    from scan_viz.regions.domain import looks_drawn
    from scan_viz.regions.images import load_image

    scene = load_image(SCENE)
    assert looks_drawn(scene) and looks_drawn(jpeg_again(scene, 75))
    assert len(PHOTOS) == 7
    for photo in PHOTOS:
        assert not looks_drawn(load_image(photo)), photo.name


def test_row_flatness_counts_rows_of_one_colour_not_flat_areas():
    from scan_viz.regions.domain import row_flatness

    gradient = np.repeat(np.arange(100, dtype=np.uint8)[:, None, None], 3, axis=2).repeat(80, axis=1)
    assert row_flatness(gradient) == pytest.approx(1.0)  # every row one colour, every column changing
    assert row_flatness(gradient.transpose(1, 0, 2)) == pytest.approx(-1.0)
    assert row_flatness(np.full((50, 60, 3), 7, np.uint8)) == 0.0  # flat both ways: no sign of a drawing
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert abs(row_flatness(noise)) < 0.01


def test_only_the_photo_model_expects_photographs():
    from scan_viz.model import load_model
    from scan_viz.regions.domain import expects_photographs

    assert expects_photographs(load_model("photo-zeroshot").config.extra)
    assert not expects_photographs(load_model("scan-emoji-t2i").config.extra)
