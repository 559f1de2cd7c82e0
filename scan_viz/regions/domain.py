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
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scan_viz.types import Regions


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

