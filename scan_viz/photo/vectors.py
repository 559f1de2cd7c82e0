"""The word side of the zero-shot photo model: class-name and colour-name vectors, the ConSE matrix, colours.

ConSE embeds a region as ``sum_t p(y_t | x) s(y_t) / Z`` over its top-T classes y_t, where s(y) is the word
vector of class y's name; here s(y) is the unit mean of the GloVe vectors of the words of the ImageNet label
(``"Egyptian cat"`` -> mean of "egyptian" and "cat"). Colour names extend it the same way: a region's pixels
are sorted into the 11 basic colour terms (Berlin and Kay), and their fractions weight the colour names' vectors.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import cv2
import numpy as np

#: The 11 basic colour terms (Berlin and Kay 1969) and one sRGB prototype each; a pixel takes the nearest in CIELAB.
COLOUR_TERMS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20), "white": (245, 245, 245), "gray": (128, 128, 128), "red": (200, 30, 30),
    "orange": (240, 140, 20), "yellow": (240, 220, 40), "green": (50, 150, 50), "blue": (40, 90, 200),
    "purple": (120, 50, 160), "pink": (240, 150, 180), "brown": (120, 75, 35),
}
#: A colour term's vector is the mean of these spellings' vectors (GloVe learnt "grey" and "gray" apart).
COLOUR_SPELLINGS = {"gray": ("gray", "grey")}


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> (..., 3) float32 CIELAB (L 0-100)."""
    flat = np.ascontiguousarray(rgb.reshape(-1, 1, 3), dtype=np.uint8).astype(np.float32) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape[:-1] + (3,))


_PROTOTYPES_LAB = _lab(np.array(list(COLOUR_TERMS.values()), dtype=np.uint8))


def colour_index(image: np.ndarray) -> np.ndarray:
    """(H, W) int: the basic colour term of each pixel of an (H, W, 3) uint8 RGB image (index into COLOUR_TERMS)."""
    lab = _lab(image)
    distances = ((lab[..., None, :] - _PROTOTYPES_LAB) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def colour_fractions(index: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(n_boxes, n_colours): the share of each colour term among the pixels of each box.

    index: (H, W) from :func:`colour_index`; boxes: (n, 4) x1, y1, x2, y2 in index's pixels (at least one
    pixel is counted per box)."""
    n_colours = len(COLOUR_TERMS)
    height, width = index.shape
    # one integral image per colour: each box's counts in O(1)
    onehot = (index[..., None] == np.arange(n_colours)).astype(np.int32)
    integral = np.zeros((height + 1, width + 1, n_colours), dtype=np.int64)
    integral[1:, 1:] = onehot.cumsum(0).cumsum(1)
    out = np.zeros((len(boxes), n_colours), dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64)):
        c1, r1 = int(np.clip(np.floor(x1), 0, width - 1)), int(np.clip(np.floor(y1), 0, height - 1))
        c2, r2 = int(np.clip(np.ceil(x2), c1 + 1, width)), int(np.clip(np.ceil(y2), r1 + 1, height))
        counts = integral[r2, c2] - integral[r1, c2] - integral[r2, c1] + integral[r1, c1]
        out[k] = counts / max(int(counts.sum()), 1)
    return out


def name_words(name: str) -> list[str]:
    """The lowercase words of a class label: ``"jack-o'-lantern"`` -> jack, o, lantern."""
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def phrase_vector(words: Sequence[str], lookup: Callable[[str], np.ndarray | None]) -> np.ndarray | None:
    """Unit mean of the known words' vectors, or None when no word is known."""
    vectors = [v for v in (lookup(w) for w in words) if v is not None]
    if not vectors:
        return None
    mean = np.mean(vectors, axis=0)
    return mean / (np.linalg.norm(mean) + 1e-12)


def class_vectors(class_names: Sequence[str], lookup: Callable[[str], np.ndarray | None], dim: int) -> np.ndarray:
    """(n_classes, dim) unit vector of each class name (zeros for a name with no known word)."""
    out = np.zeros((len(class_names), dim), dtype=np.float32)
    for i, name in enumerate(class_names):
        vector = phrase_vector(name_words(name), lookup)
        if vector is not None:
            out[i] = vector
    return out


def colour_vectors(lookup: Callable[[str], np.ndarray | None], dim: int) -> np.ndarray:
    """(n_colours, dim) unit vector of each colour term (its spellings' mean)."""
    out = np.zeros((len(COLOUR_TERMS), dim), dtype=np.float32)
    for i, term in enumerate(COLOUR_TERMS):
        vector = phrase_vector(COLOUR_SPELLINGS.get(term, (term,)), lookup)
        if vector is not None:
            out[i] = vector
    return out


def conse_matrix(class_vecs: np.ndarray, colour_vecs: np.ndarray, colour_weight: float,
                 object_vecs: np.ndarray | None = None, object_weight: float = 1.0) -> np.ndarray:
    """(dim, n_classes + n_object_classes + n_colours): the image encoder's ``fc.weight``. A region's feature
    [p_top-T; o; q_colours] maps to ``sum_t p_t s(y_t) + object_weight * sum_k o_k s(k) + colour_weight * sum_c
    q_c g(c)``: ConSE's region vector (up to 1/Z, which the encoder's l2 normalisation removes), the same sum over
    the object detector's class scores o (its class names' vectors s(k)), and the colour names."""
    if object_vecs is None:
        object_vecs = np.zeros((0, class_vecs.shape[1]), dtype=np.float32)
    return np.concatenate([class_vecs, object_weight * object_vecs, colour_weight * colour_vecs],
                          axis=0).T.astype(np.float32)
