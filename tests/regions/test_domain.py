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
