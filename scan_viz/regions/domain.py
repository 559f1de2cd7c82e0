"""Is a picture like the gallery's? The nearest-region novelty check behind the app's out-of-domain note.

A model trained on one kind of picture (the bundled ones: generated emoji scenes) says little about another (a
photograph), so the app warns, but only where that is true: a JPEG of a gallery scene is in domain. The check
embeds the picture's regions with the model's image encoder and scores it by the mean cosine of each region to
its nearest region of a reference sample of the gallery. The threshold is the lowest score of a disjoint
calibration sample of gallery images: a picture less like the gallery than every one of those is called out of
domain. Measured on the bundled model and gallery (200 calibration images): gallery images score 0.86-0.99 (1%
quantile 0.873), and matplotlib's sample photograph and drawings 0.81-0.83; gallery images re-detected from their
JPEGs 0.88-0.98. A gallery too small to calibrate (under MIN_CALIBRATION images, e.g. the 7-photo gallery of the
zero-shot photo model) gets no threshold, so no note: a photo under the emoji model is still called out of domain,
but an emoji scene under the photo model is not (the emoji model's own check, asked the other way round, also
passes scikit-image's cat photo, chelsea, as an emoji scene: a wrong note on the first photo a reader tries).

For that direction a model whose config says it expects photographs (``extra["pictures"] == "photographs"``, the
zero-shot photo model) gets a pixel check instead, :func:`row_flatness`: the emoji scenes are rendered over
vertical colour gradients whose rows are exactly one colour, so far more horizontal than vertical neighbours are
exactly equal, while a photograph's sensor noise and texture make the two about as likely. Measured by
``python tools/measure_drawing_check.py`` (threshold chosen on one half, error rates on the other: see
:data:`DRAWN_THRESHOLD`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scan_viz.types import Regions

#: The side a picture is fitted within before :func:`row_flatness` (bounds its cost on a 25-megapixel upload).
FLATNESS_SIDE = 640


#: A gallery of fewer calibration images than this gets no threshold (every picture passes): measured on the
#: 7-photo gallery (examples/photos) under the first (untuned) photo-zeroshot build, its 4 calibration photos set
#: a threshold of 0.78 that 15 emoji scenes passed (0.79-0.85) and a real photograph (scikit-image's motorcycle,
#: 0.77) failed.
MIN_CALIBRATION = 5


@dataclasses.dataclass(frozen=True)
class DomainCheck:
    """reference: (n_reference_regions, d) unit region embeddings of a gallery sample; threshold: the lowest score
    of the calibration images; n_calibration: how many there were."""

    reference: np.ndarray
    threshold: float
    n_calibration: int

    @classmethod
    def fit(cls, region_embeddings: np.ndarray, region_lengths: np.ndarray | None = None, n_reference: int = 300,
            n_calibration: int = 200, seed: int = 0) -> DomainCheck:
        """From a gallery's region embeddings (n_images, n_regions, d), unit rows; ``region_lengths``
        (n_images,) real regions per image (None: all). Reference and calibration images are disjoint random
        samples (half each when the gallery has fewer than ``n_reference + n_calibration`` images)."""
        embeddings = np.asarray(region_embeddings, dtype=np.float32)
        n_images = len(embeddings)
        if n_images < 2:
            raise ValueError("a domain check needs a gallery of at least 2 images")
        order = np.random.default_rng(seed).permutation(n_images)
        if n_images < n_reference + n_calibration:
            n_reference = n_images // 2
            n_calibration = n_images - n_reference
        reference = _stack(embeddings, region_lengths, order[:n_reference])
        check = cls(reference, -np.inf, n_calibration)
        if n_calibration < MIN_CALIBRATION:
            # too few images to say what the gallery's own pictures score: no note rather than a wrong one
            return check
        scores = [check.similarity(_stack(embeddings, region_lengths, [i]))
                  for i in order[n_reference:n_reference + n_calibration]]
        return dataclasses.replace(check, threshold=float(min(scores)))

    def similarity(self, embedded: np.ndarray) -> float:
        """Mean over the picture's regions (n_regions, d, unit rows) of the cosine to the nearest reference region."""
        embedded = np.asarray(embedded, dtype=np.float32)
        if len(embedded) == 0:
            return -1.0
        return float((embedded @ self.reference.T).max(axis=1).mean())

    def in_domain(self, embedded: np.ndarray) -> bool:
        return self.similarity(embedded) >= self.threshold


def _stack(embeddings: np.ndarray, lengths: np.ndarray | None, images) -> np.ndarray:
    return np.concatenate([embeddings[i, : (int(lengths[i]) if lengths is not None else embeddings.shape[1])]
                           for i in images])


def embed_regions(model, regions: Regions) -> np.ndarray:
    """(n_regions, d) the model's unit region embeddings of one picture's regions."""
    return np.asarray(model.encode_images(regions.features[None])[0, : len(regions)].float().numpy())



#: :func:`row_flatness` at or above this calls a picture a generated drawing: the midpoint of the gap on the fit
#: half of tools/measure_drawing_check.py (23 installed sample photos split by position, 12 fit / 11 held out, each
#: also as JPEG q50/75/90 and halved; gallery scenes 0-499 fit / 500-999 held out, as shipped and JPEG q75/85).
#: Fit half: photos <= 0.062, scenes >= 0.072. Held out: 0 of 1,500 scene files and 0 of 200 fresh renders (PNG and
#: JPEG q75) missed; 6 of 55 photo files wrongly called drawings: scikit-image's retina microscope image
#: (microaneurysms, 0.070-0.096) in 4 of its 5 versions and its camera man halved (0.070). The gap is narrow.
DRAWN_THRESHOLD = 0.067
#: Those held-out rates in words, for the app's note.
DRAWN_MEASURED = ("caught every held-out emoji scene (1,700 files) and wrongly caught 6 of 55 held-out photo files "
                  "(a microscope image, a halved photo)")


def row_flatness(image: np.ndarray) -> float:
    """How much likelier a picture's horizontal neighbours are exactly equal in colour than its vertical ones.

    ``image``: (H, W, 3) uint8, fitted within FLATNESS_SIDE first. The fraction of horizontally adjacent pixel
    pairs with equal RGB minus the fraction of vertically adjacent ones: the bundled emoji scenes' gradient skies
    and grounds have rows of one colour (and keep them through JPEG and resizing), photographs are about equal
    both ways (a JPEG's flat sky or a blown-out highlight is flat in both directions).
    """
    from scan_viz.regions.images import fit_within

    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=2)
    image = fit_within(np.ascontiguousarray(image[..., :3]), FLATNESS_SIDE, FLATNESS_SIDE)[0]
    if image.shape[0] < 2 or image.shape[1] < 2:
        return 0.0
    horizontal = (image[:, 1:] == image[:, :-1]).all(axis=2).mean()
    vertical = (image[1:] == image[:-1]).all(axis=2).mean()
    return float(horizontal - vertical)


def looks_drawn(image: np.ndarray) -> bool:
    """Whether a picture looks like a generated emoji-scene drawing rather than a photograph (:func:`row_flatness`)."""
    return row_flatness(image) >= DRAWN_THRESHOLD


def expects_photographs(extra: dict) -> bool:
    """Whether a model's config (``extra``) says its pictures are photographs, so a drawing gets a note."""
    return str(extra.get("pictures") or "").strip().lower() == "photographs"
